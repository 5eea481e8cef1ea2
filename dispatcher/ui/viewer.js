// The viewer: one frame of a task with its annotations (tags, shapes, and the tracks visible on
// the frame) drawn, keyboard stepping, and CVAT's AI tools on it: interactors (left click
// positive, right click negative, a box first where the function starts with one) and "Detect"
// with a detector on this frame only, both optionally inside a region (CVAT's roi).
import {api, guarded, showError, taskLabels} from "./api.js";
import {describeRegion, REGION_COLOUR} from "./annotate.js";
import {field, h, labelColour} from "./dom.js";
import {decodeMask, encodeMask} from "./masks.js";

// The region drawn per task, kept while the user steps through the task's frames (this tab only).
const regions = new Map();

export async function viewerPage(view, taskId, frameNumber) {
  const [task, taskLabelList, meta, functions] = await Promise.all([
    api("GET", `/api/tasks/${taskId}`), taskLabels(taskId), api("GET", `/api/tasks/${taskId}/data/meta`),
    api("GET", "/api/lambda/functions")]);
  if (!meta.size) {
    view.replaceChildren(h("p", {}, h("a", {href: `#/tasks/${taskId}`}, `← Task ${taskId}`)),
      h("h1", {}, task.name), h("p", {}, "This task has no frames yet."));
    return;
  }
  if (frameNumber >= meta.size) {
    location.hash = `#/tasks/${taskId}/frames/${meta.size - 1}`;
    return;
  }
  const labels = flatLabels(taskLabelList);
  const frameInfo = meta.frames[frameNumber];
  const canvas = h("canvas", {width: frameInfo.width, height: frameInfo.height, tabindex: "0",
    "aria-label": `Frame ${frameNumber} (${frameInfo.name}) with its annotations; left click adds a positive point, right click a negative one; after "Draw region", drag the region`});
  const objects = h("ul", {class: "objects", "aria-label": "Objects on this frame"});
  const status = h("p", {class: "ai-status", role: "status"});
  const image = await loadFrame(taskId, frameNumber);
  let shapes = [];
  let tags = [];
  let tracks = []; // [{track, shape}]: the track and its shape on this frame
  const interaction = {fn: null, label: null, pos: [], neg: [], box: null, drag: null, mask: null, busy: false, dirty: false};
  // The region ([xtl, ytl, xbr, ybr], right and bottom exclusive) Detect and the interactors run in.
  let region = regions.get(taskId) || null;
  let regionNote = "";
  if (region && (region[2] > frameInfo.width || region[3] > frameInfo.height)) {
    regionNote = `The region ${describeRegion(region)} does not fit this ${frameInfo.width}×${frameInfo.height} frame and was cleared.`;
    region = null;
    regions.delete(taskId);
  }
  const regionMode = {drawing: false, drag: null};

  async function loadAnnotations() {
    const data = await api("GET", `/api/tasks/${taskId}/annotations?frame=${frameNumber}`);
    shapes = data.shapes;
    tags = data.tags;
    tracks = data.tracks.map((track) => ({track, shape: trackShapeAt(track, frameNumber, meta.size - 1)}))
      .filter(({shape}) => shape);
    listObjects();
    draw();
  }

  function listObjects() {
    const items = [...tags.map((tag) => objectItem(tag, "tag")), ...shapes.map((shape) => objectItem(shape, shape.type)),
      ...tracks.map(trackItem)];
    objects.replaceChildren(...(items.length ? items : [h("li", {class: "muted"}, "No annotations on this frame.")]));
  }

  const deleteButton = (what, kind, id) => h("button", {type: "button", class: "quiet", "aria-label": `Delete ${what}`,
    onclick: (event) => guarded(async () => {
      await api("PATCH", `/api/tasks/${taskId}/annotations?action=delete`, {json: {[kind]: [{id}]}});
      await loadAnnotations();
    }, event.currentTarget)}, "Delete");

  function objectItem(item, type) {
    const label = labels.get(item.label_id);
    const kind = type === "tag" ? "tags" : "shapes";
    return h("li", {dataset: {type, label: label ? label.name : ""}},
      h("span", {class: "swatch", style: `background:${labelColour(item.label_id)}`}),
      `${type} ${label ? label.name : item.label_id}`,
      item.score !== undefined ? ` · ${item.score.toFixed(2)}` : "",
      describeAttributes(item, label) ? ` · ${describeAttributes(item, label)}` : "",
      item.source ? h("span", {class: "muted"}, ` (${item.source})`) : "", " ",
      deleteButton(`${type} ${label ? label.name : ""} ${item.id}`, kind, item.id));
  }

  // A track: "track <label> #<id>", its shape type, keyframe or interpolated; Delete removes the whole track.
  function trackItem({track, shape}) {
    const label = labels.get(track.label_id);
    const name = label ? label.name : String(track.label_id);
    const attributes = describeAttributes({attributes: [...(track.attributes || []), ...(shape.attributes || [])]}, label);
    return h("li", {dataset: {type: "track", label: label ? label.name : "", track: track.id}},
      h("span", {class: "swatch", style: `background:${labelColour(track.label_id)}`}),
      `track ${name} #${track.id}`,
      h("span", {class: "muted"}, ` · ${shape.type}, ${shape.keyframe ? "keyframe" : "interpolated"}`),
      attributes ? ` · ${attributes}` : "",
      track.source ? h("span", {class: "muted"}, ` (${track.source})`) : "", " ",
      deleteButton(`track ${name} #${track.id}`, "tracks", track.id));
  }

  function draw() {
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const width = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 400));
    for (const shape of shapes) drawShape(context, shape, labels.get(shape.label_id), width);
    for (const {track, shape} of tracks) {
      const label = labels.get(track.label_id);
      drawShape(context, {...shape, label_id: track.label_id, attributes: [...(track.attributes || []), ...(shape.attributes || [])]},
        label, width, `${label ? label.name : track.label_id} #${track.id}`);
    }
    const shownRegion = region || (regionMode.drag && boxOf(regionMode.drag.start, regionMode.drag.end));
    if (shownRegion) drawRegion(context, shownRegion, width);
    drawInteraction(context, interaction, width);
  }

  // Region: drawn by dragging on the canvas after "Draw region"; sent as roi with Detect and with
  // every interactor call while set.
  const regionText = h("p", {class: "region-text", role: "status"});
  const drawRegionButton = h("button", {type: "button", "aria-pressed": "false"}, "Draw region");
  const clearRegionButton = h("button", {type: "button", class: "quiet"}, "Clear region");

  function showRegion(message) {
    regionText.replaceChildren(h("strong", {}, "Region: "), region ? describeRegion(region) : "the whole frame",
      message ? h("span", {class: "muted"}, ` · ${message}`) : "");
    clearRegionButton.disabled = !region;
    drawRegionButton.setAttribute("aria-pressed", String(regionMode.drawing));
    drawRegionButton.textContent = regionMode.drawing ? "Drawing… (Esc stops)" : "Draw region";
  }

  function setRegion(value, message) {
    region = value;
    if (region) regions.set(taskId, region);
    else regions.delete(taskId);
    regionMode.drawing = false;
    regionMode.drag = null;
    // Points and a box placed for the old region may lie outside the new one: start over.
    if (interaction.fn && (interaction.pos.length || interaction.neg.length || interaction.box)) resetInteraction();
    showRegion(message);
    draw();
  }

  drawRegionButton.addEventListener("click", () => {
    regionMode.drawing = !regionMode.drawing;
    regionMode.drag = null;
    showRegion(regionMode.drawing ? "drag across the frame to draw it" : "");
    draw();
    if (regionMode.drawing) canvas.focus();
  });
  clearRegionButton.addEventListener("click", () => setRegion(null, "cleared"));
  showRegion(regionNote);

  const insideRegion = ([x, y]) => !region || (region[0] <= x && x < region[2] && region[1] <= y && y < region[3]);
  const outsideMessage = ([x, y]) =>
    `The point (${x}, ${y}) is outside the region ${describeRegion(region)}: click inside it, or clear the region.`;

  // Interactors
  const interactors = functions.filter((fn) => fn.kind === "interactor");
  const interactorSelect = h("select", {name: "interactor"}, h("option", {value: ""}, interactors.length ? "Choose an interactor…" : "No interactors are deployed"),
    interactors.map((fn) => h("option", {value: fn.id, disabled: fn.state !== "ready"}, fn.state === "ready" ? fn.name : `${fn.name} (${fn.state})`)));
  // Interactors return masks: labels that may hold one.
  const labelSelect = h("select", {name: "label"}, [...labels.values()].filter((l) => l.parent_id === null && ["any", "mask"].includes(l.type))
    .map((label) => h("option", {value: String(label.id)}, label.name)));
  if (!labelSelect.options.length) labelSelect.append(h("option", {value: ""}, "No label of type any or mask"));
  const help = h("p", {class: "muted"});
  const saveButton = h("button", {type: "button", disabled: true}, "Save as annotation");
  const resetButton = h("button", {type: "button", class: "quiet"}, "Reset");

  function resetInteraction() {
    Object.assign(interaction, {pos: [], neg: [], box: null, drag: null, mask: null, dirty: false});
    saveButton.disabled = true;
    status.textContent = interaction.fn ? instructions(interaction.fn) : "";
    draw();
  }

  interactorSelect.addEventListener("change", () => {
    interaction.fn = interactors.find((fn) => fn.id === interactorSelect.value) || null;
    help.textContent = interaction.fn ? (interaction.fn.help_message || "") : "";
    resetInteraction();
  });
  resetButton.addEventListener("click", resetInteraction);

  function ready() {
    const fn = interaction.fn;
    if (boxRequired(fn) && !interaction.box) return false;
    return Boolean(interaction.box) || interaction.pos.length >= Math.max(1, fn.min_pos_points);
  }

  async function interact() {
    if (!ready()) { status.textContent = instructions(interaction.fn); draw(); return; }
    if (interaction.busy) { interaction.dirty = true; return; }
    interaction.busy = true;
    status.textContent = `Running ${interaction.fn.name}…`;
    const box = interaction.box;
    try {
      const body = {task: taskId, frame: frameNumber, pos_points: interaction.pos, neg_points: interaction.neg,
        obj_bbox: box ? [[box[0], box[1]], [box[2], box[3]]] : []};
      if (region) body.roi = region;
      const reply = await api("POST", `/api/lambda/functions/${interaction.fn.id}`, {json: body});
      if (!Array.isArray(reply.mask)) throw new Error(`${interaction.fn.name} replied without a mask`);
      interaction.mask = encodeMask(reply.mask);
      const area = interaction.mask ? decodeMask(interaction.mask).pixels.reduce((sum, v) => sum + v, 0) : 0;
      status.textContent = `Mask of ${area} pixels from ${interaction.pos.length} positive and ${interaction.neg.length} negative point(s)`
        + (box ? " and a box" : "") + (interaction.mask ? "." : ": empty, add points.");
      saveButton.disabled = !interaction.mask;
    } catch (error) {
      status.textContent = "The interactor failed; see the message above.";
      showError(error);
    } finally {
      interaction.busy = false;
      draw();
    }
    if (interaction.dirty) { interaction.dirty = false; interact(); }
  }

  saveButton.addEventListener("click", () => guarded(async () => {
    if (!labelSelect.value) throw new Error("Choose a label for the new annotation.");
    await api("PATCH", `/api/tasks/${taskId}/annotations?action=create`, {json: {shapes: [{
      type: "mask", frame: frameNumber, label_id: Number(labelSelect.value), points: interaction.mask, source: "semi-auto"}]}});
    resetInteraction();
    status.textContent = "Saved.";
    await loadAnnotations();
  }, saveButton));

  const imagePoint = (event) => {
    const rect = canvas.getBoundingClientRect();
    return [Math.round((event.clientX - rect.left) * canvas.width / rect.width),
      Math.round((event.clientY - rect.top) * canvas.height / rect.height)];
  };
  // Frame pixels under the pointer, inside the frame.
  const framePoint = (event) => imagePoint(event).map((v, i) => Math.min(i ? canvas.height : canvas.width, Math.max(0, v)));
  canvas.addEventListener("contextmenu", (event) => {
    event.preventDefault();
    if (!interaction.fn || regionMode.drawing) return;
    const point = imagePoint(event);
    if (!insideRegion(point)) { status.textContent = outsideMessage(point); return; }
    interaction.neg.push(point);
    interact();
  });
  canvas.addEventListener("mousedown", (event) => {
    if (event.button !== 0) return;
    if (regionMode.drawing) {
      event.preventDefault();
      regionMode.drag = {start: framePoint(event), end: framePoint(event)};
      return;
    }
    if (!interaction.fn) return;
    interaction.drag = {start: imagePoint(event), end: imagePoint(event)};
  });
  canvas.addEventListener("mousemove", (event) => {
    if (regionMode.drag) {
      regionMode.drag.end = framePoint(event);
      draw();
      return;
    }
    if (!interaction.drag) return;
    interaction.drag.end = imagePoint(event);
    draw();
  });
  canvas.addEventListener("mouseup", (event) => {
    if (event.button !== 0) return;
    if (regionMode.drag) {
      const drawn = boxOf(regionMode.drag.start, framePoint(event));
      regionMode.drag = null;
      if (drawn[2] - drawn[0] < 2 || drawn[3] - drawn[1] < 2) {
        showRegion("drag across the frame (press, move, release) to draw it");
        draw();
        return;
      }
      setRegion(drawn, "Detect and the interactors now work inside it");
      return;
    }
    if (!interaction.drag) return;
    const {start} = interaction.drag;
    const end = imagePoint(event);
    interaction.drag = null;
    const dragged = Math.abs(end[0] - start[0]) > 4 && Math.abs(end[1] - start[1]) > 4;
    if (dragged && boxAllowed(interaction.fn) && !interaction.box) {
      let box = boxOf(start, end);
      if (region) { // the box is clipped to the region, where the interactor works
        box = [Math.max(box[0], region[0]), Math.max(box[1], region[1]), Math.min(box[2], region[2] - 1), Math.min(box[3], region[3] - 1)];
        if (box[2] - box[0] < 2 || box[3] - box[1] < 2) {
          status.textContent = `The box is outside the region ${describeRegion(region)}: drag it inside the region, or clear the region.`;
          draw();
          return;
        }
      }
      interaction.box = box;
    } else if (boxRequired(interaction.fn) && !interaction.box) {
      status.textContent = "Draw a box first: press the mouse button, drag across the object, release.";
      draw();
      return;
    } else if (!insideRegion(end)) {
      status.textContent = outsideMessage(end);
      draw();
      return;
    } else {
      interaction.pos.push(end);
    }
    interact();
  });

  // Detect: a detector on this frame only; its shapes are added to the task.
  const detectors = functions.filter((fn) => fn.kind === "detector");
  const detectorSelect = h("select", {name: "detector"}, h("option", {value: ""}, detectors.length ? "Choose a detector…" : "No detectors are deployed"),
    detectors.map((fn) => h("option", {value: fn.id, disabled: fn.state !== "ready"}, fn.state === "ready" ? fn.name : `${fn.name} (${fn.state})`)));
  const detectThreshold = h("input", {type: "number", min: "0", max: "1", step: "0.01", placeholder: "the model's default"});
  const detectButton = h("button", {type: "button"}, "Detect");
  const detectStatus = h("p", {role: "status", class: "detect-status"});
  detectButton.addEventListener("click", () => guarded(async () => {
    if (!detectorSelect.value) throw new Error("Choose a detector first.");
    detectStatus.textContent = region ? `Detecting inside the region ${describeRegion(region)}…` : "Detecting…";
    const body = {task: taskId, frame: frameNumber};
    if (detectThreshold.value !== "") body.threshold = Number(detectThreshold.value);
    if (region) body.roi = region;
    try {
      const found = await api("POST", `/api/lambda/functions/${detectorSelect.value}`, {json: body});
      if (found.shapes.length || found.tags.length) {
        await api("PATCH", `/api/tasks/${taskId}/annotations?action=create`, {json: {shapes: found.shapes, tags: found.tags}});
      }
      detectStatus.textContent = `Added ${found.shapes.length} shape(s) and ${found.tags.length} tag(s)${body.roi ? " found inside the region" : ""}.`;
    } catch (error) {
      detectStatus.textContent = "Detection failed; see the message above.";
      throw error;
    }
    await loadAnnotations();
  }, detectButton));

  // Keyboard: left/right step through frames, unless the user is typing in a field.
  const go = (number) => { location.hash = `#/tasks/${taskId}/frames/${number}`; };
  const onKey = (event) => {
    if (event.target.closest("input, select, textarea") || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "ArrowRight" && frameNumber + 1 < meta.size) { event.preventDefault(); go(frameNumber + 1); }
    if (event.key === "ArrowLeft" && frameNumber > 0) { event.preventDefault(); go(frameNumber - 1); }
    if (event.key === "Escape" && regionMode.drawing) {
      regionMode.drawing = false;
      regionMode.drag = null;
      showRegion("");
      draw();
    } else if (event.key === "Escape" && interaction.fn) resetInteraction();
  };
  document.addEventListener("keydown", onKey);
  const frameInput = h("input", {type: "number", min: "0", max: String(meta.size - 1), value: String(frameNumber)});
  const frameForm = h("form", {class: "row", "aria-label": "Go to frame", onsubmit: (event) => { event.preventDefault(); go(Math.min(meta.size - 1, Math.max(0, Number(frameInput.value) || 0))); }},
    h("button", {type: "button", class: "quiet", disabled: frameNumber === 0, onclick: () => go(frameNumber - 1), "aria-keyshortcuts": "ArrowLeft"}, "← Previous"),
    field("Frame", frameInput), h("button", {type: "submit", class: "quiet"}, "Go"),
    h("button", {type: "button", class: "quiet", disabled: frameNumber + 1 >= meta.size, onclick: () => go(frameNumber + 1), "aria-keyshortcuts": "ArrowRight"}, "Next →"));

  view.replaceChildren(
    h("p", {}, h("a", {href: `#/tasks/${taskId}`}, `← Task ${taskId}: ${task.name}`)),
    h("h1", {}, `Frame ${frameNumber}`, h("span", {class: "muted"}, ` (${frameNumber + 1} of ${meta.size}) · ${frameInfo.name} · ${frameInfo.width}×${frameInfo.height}`)),
    frameForm,
    h("div", {class: "viewer"},
      h("div", {class: "stage"}, canvas),
      h("aside", {},
        h("section", {class: "card", "aria-labelledby": "objects-title"}, h("h2", {id: "objects-title"}, "Annotations"), objects),
        h("section", {class: "card", "aria-labelledby": "region-title"}, h("h2", {id: "region-title"}, "Region"),
          h("p", {class: "muted"}, "Detect and the interactors work inside the region only; it is kept for this task's other frames."),
          regionText, h("div", {class: "buttons"}, drawRegionButton, clearRegionButton)),
        h("section", {class: "card", "aria-labelledby": "ai-title"}, h("h2", {id: "ai-title"}, "Interactors"),
          field("Interactor", interactorSelect), field("Label", labelSelect), help, status,
          h("div", {class: "buttons"}, saveButton, resetButton)),
        h("section", {class: "card", "aria-labelledby": "detect-title"}, h("h2", {id: "detect-title"}, "Detect on this frame"),
          field("Detector", detectorSelect), field("Threshold", detectThreshold), h("div", {class: "buttons"}, detectButton), detectStatus))));
  await loadAnnotations();
  canvas.focus();
  return () => document.removeEventListener("keydown", onKey);
}

// CVAT's flags: startswith_box asks for a box before any click; startswith_box_optional offers one.
const boxRequired = (fn) => fn.startswith_box && !fn.startswith_box_optional;
const boxAllowed = (fn) => fn.startswith_box || fn.startswith_box_optional;

function instructions(fn) {
  const parts = [];
  if (boxAllowed(fn)) parts.push(boxRequired(fn) ? "Drag a box around the object first." : "Optionally drag a box around the object first.");
  parts.push(`Left click: positive point (at least ${Math.max(1, fn.min_pos_points)}). Right click: negative point.`);
  return parts.join(" ");
}

async function loadFrame(taskId, frameNumber) {
  const blob = await api("GET", `/api/tasks/${taskId}/data?type=frame&number=${frameNumber}&quality=original`, {blob: true});
  return createImageBitmap(blob);
}

function flatLabels(taskLabels) {
  const all = new Map();
  const add = (label) => { all.set(label.id, label); (label.sublabels || []).forEach(add); };
  taskLabels.forEach(add);
  return all;
}

function describeAttributes(item, label) {
  if (!label || !item.attributes || !item.attributes.length) return "";
  const names = new Map((label.attributes || []).map((a) => [a.id, a.name]));
  return item.attributes.map((a) => `${names.get(a.spec_id) || a.spec_id}=${a.value}`).join(", ");
}

function drawShape(context, shape, label, width, name) {
  const colour = labelColour(shape.label_id);
  const p = shape.points;
  context.save();
  context.strokeStyle = colour;
  context.fillStyle = colour;
  context.lineWidth = width;
  let bounds = box(p); // where the caption goes: above the shape, or below it at the image's top
  if (shape.type === "rectangle") {
    const [x1, y1, x2, y2] = p;
    context.translate((x1 + x2) / 2, (y1 + y2) / 2);
    context.rotate(((shape.rotation || 0) * Math.PI) / 180);
    context.strokeRect(-(x2 - x1) / 2, -(y2 - y1) / 2, x2 - x1, y2 - y1);
    context.setTransform(1, 0, 0, 1, 0, 0);
  } else if (shape.type === "polygon" || shape.type === "polyline") {
    context.beginPath();
    for (let i = 0; i < p.length; i += 2) context[i ? "lineTo" : "moveTo"](p[i], p[i + 1]);
    if (shape.type === "polygon") {
      context.closePath();
      context.globalAlpha = 0.25;
      context.fill();
      context.globalAlpha = 1;
    }
    context.stroke();
  } else if (shape.type === "ellipse") {
    const [cx, cy, rx, ry] = p;
    context.beginPath();
    context.ellipse(cx, cy, Math.abs(rx - cx), Math.abs(cy - ry), ((shape.rotation || 0) * Math.PI) / 180, 0, 2 * Math.PI);
    context.stroke();
    bounds = [cx - Math.abs(rx - cx), cy - Math.abs(cy - ry), cx + Math.abs(rx - cx), cy + Math.abs(cy - ry)];
  } else if (shape.type === "mask") {
    const mask = decodeMask(p);
    context.globalAlpha = 0.45;
    context.drawImage(maskBitmap(mask, colour), mask.left, mask.top);
    context.globalAlpha = 1;
    bounds = [mask.left, mask.top, mask.left + mask.width, mask.top + mask.height];
  } else if (shape.type === "skeleton") {
    for (const element of shape.elements || []) {
      if (!element.outside) dot(context, element.points[0], element.points[1], width * 2);
    }
    bounds = box((shape.elements || []).flatMap((element) => element.points));
  } else {
    for (let i = 0; i < p.length; i += 2) dot(context, p[i], p[i + 1], width * 2);
  }
  const text = (name || (label ? label.name : String(shape.label_id))) + (shape.score !== undefined ? ` ${shape.score.toFixed(2)}` : "");
  const attributes = describeAttributes(shape, label);
  caption(context, attributes ? `${text} · ${attributes}` : text, bounds, colour, width);
  context.restore();
}

// [x1, y1, x2, y2] of two corners, in either order.
function boxOf(start, end) {
  return [Math.min(start[0], end[0]), Math.min(start[1], end[1]), Math.max(start[0], end[0]), Math.max(start[1], end[1])];
}

// A track's shape on a frame, by the server's rule (dispatcher/tracks.py): shown from its first
// keyframe on; between keyframes rectangles, ellipses, cuboids and polygons, polylines and points
// with the same number of points move linearly, anything else (masks) holds the previous
// keyframe; nothing after an outside keyframe until the next keyframe; after the last keyframe it
// holds to the task's last frame unless that keyframe is outside. Null where it is not visible.
const LINEAR = ["rectangle", "ellipse", "cuboid", "polygon", "polyline", "points"];

export function trackShapeAt(track, frame, lastFrame) {
  if (frame > lastFrame) return null;
  const keyframes = [...track.shapes].sort((a, b) => a.frame - b.frame);
  let index = -1;
  while (index + 1 < keyframes.length && keyframes[index + 1].frame <= frame) index++;
  if (index < 0 || keyframes[index].outside) return null;
  const shape = keyframes[index];
  if (shape.frame === frame) return {...shape, keyframe: true};
  const following = keyframes[index + 1];
  if (!following || following.outside || !LINEAR.includes(shape.type) || following.type !== shape.type
      || following.points.length !== shape.points.length) {
    return {...shape, frame, keyframe: false};
  }
  const share = (frame - shape.frame) / (following.frame - shape.frame);
  return {...shape, frame, keyframe: false,
    points: shape.points.map((value, i) => value + (following.points[i] - value) * share),
    rotation: (shape.rotation || 0) + ((following.rotation || 0) - (shape.rotation || 0)) * share};
}

// The region: the frame outside it dimmed, its edge dashed amber (an interactor's box is cyan).
function drawRegion(context, [x1, y1, x2, y2], width) {
  context.save();
  context.fillStyle = "rgba(0, 0, 0, 0.4)";
  context.beginPath();
  context.rect(0, 0, context.canvas.width, context.canvas.height);
  context.rect(x1, y1, x2 - x1, y2 - y1);
  context.fill("evenodd");
  context.lineWidth = width;
  context.setLineDash([width * 2, width * 2]);
  context.strokeStyle = REGION_COLOUR;
  context.strokeRect(x1, y1, x2 - x1, y2 - y1);
  context.restore();
}

function box(points) {
  let x1 = Infinity, y1 = Infinity, x2 = -Infinity, y2 = -Infinity;
  for (let i = 0; i < points.length; i += 2) {
    x1 = Math.min(x1, points[i]); y1 = Math.min(y1, points[i + 1]);
    x2 = Math.max(x2, points[i]); y2 = Math.max(y2, points[i + 1]);
  }
  return [x1, y1, x2, y2];
}

function dot(context, x, y, radius) {
  context.beginPath();
  context.arc(x, y, radius, 0, 2 * Math.PI);
  context.fill();
}

function caption(context, text, [x, y, , bottom], colour, width) {
  const size = Math.max(12, width * 6);
  context.font = `${size}px system-ui, sans-serif`;
  const textWidth = context.measureText(text).width;
  const top = y - size - 4 >= 0 ? y - size - 4 : bottom + 1; // never over the shape it names
  const left = Math.max(0, Math.min(x, context.canvas.width - textWidth - 8)); // and never cut by the frame's right edge
  context.fillStyle = colour;
  context.fillRect(left, top, textWidth + 8, size + 4);
  // The canvas reads a colour back as #rrggbb: dark text on light label colours, white on dark ones.
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(context.fillStyle.slice(i, i + 2), 16));
  context.fillStyle = 0.299 * r + 0.587 * g + 0.114 * b > 140 ? "#000" : "#fff";
  context.fillText(text, left + 4, top + size - 1);
}

function maskBitmap({width, height, pixels}, colour) {
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d");
  context.fillStyle = colour;
  context.fillRect(0, 0, 1, 1);
  const [r, g, b] = context.getImageData(0, 0, 1, 1).data;
  const data = new ImageData(width, height);
  pixels.forEach((on, index) => {
    if (!on) return;
    data.data.set([r, g, b, 255], index * 4);
  });
  context.putImageData(data, 0, 0);
  return canvas;
}

function drawInteraction(context, interaction, width) {
  if (interaction.mask) {
    const mask = decodeMask(interaction.mask);
    context.globalAlpha = 0.5;
    context.drawImage(maskBitmap(mask, "#00e5ff"), mask.left, mask.top);
    context.globalAlpha = 1;
  }
  const box = interaction.box || (interaction.drag && [...interaction.drag.start, ...interaction.drag.end]);
  if (box) {
    context.save();
    context.setLineDash([width * 4, width * 3]);
    context.strokeStyle = "#00e5ff";
    context.lineWidth = width;
    context.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    context.restore();
  }
  for (const [points, colour] of [[interaction.pos, "#22c55e"], [interaction.neg, "#ef4444"]]) {
    for (const [x, y] of points) {
      context.fillStyle = colour;
      context.strokeStyle = "#fff";
      context.lineWidth = Math.max(1, width / 2);
      context.beginPath();
      context.arc(x, y, width * 3, 0, 2 * Math.PI);
      context.fill();
      context.stroke();
    }
  }
}
