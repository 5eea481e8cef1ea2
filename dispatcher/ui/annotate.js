// CVAT's "Automatic annotation" dialog (detectors, with an optional region of every frame, and
// ReID, which links the task's rectangles into tracks), and the live list of annotation requests
// with progress, frames/s, ETA, failures and Cancel.
import {api, guarded, showError, taskLabels} from "./api.js";
import {field, formatSeconds, h} from "./dom.js";

const FINAL = ["finished", "failed", "canceled"];
const POLL_MS = 500;
const OFFLINE_KINDS = ["detector", "reid"];
// CVAT's UI defaults for ReID: the largest cosine distance between two boxes' appearance that still
// links them, and the largest move of a box's centre between consecutive frames, in pixels.
const REID_THRESHOLD = "0.5";
const REID_MAX_DISTANCE = "50";
// A region's colour in the dialog and in the viewer: dashed amber, apart from an interactor's cyan box.
export const REGION_COLOUR = "#ffb000";

// docs/wire-format.md §4.3: which model label types may feed which task label types.
export function compatible(modelType, taskType) {
  return modelType === taskType
    || (taskType === "any" && modelType !== "skeleton")
    || (modelType === "any" && taskType !== "skeleton")
    || (["mask", "polygon"].includes(modelType) && ["mask", "polygon"].includes(taskType));
}

// A region [xtl, ytl, xbr, ybr] (right and bottom exclusive) in words, as the UI shows it.
export function describeRegion(region) {
  const [xtl, ytl, xbr, ybr] = region;
  return `x ${xtl}, y ${ytl}, ${xbr - xtl} x ${ybr - ytl}`;
}

const functionOption = (fn) => h("option", {value: fn.id, disabled: fn.state !== "ready"},
  fn.state === "ready" ? fn.name : `${fn.name} (${fn.state}${fn.message ? `: ${fn.message}` : ""})`);

export async function openAnnotateDialog(task, started) {
  const loaded = await guarded(() => Promise.all([api("GET", "/api/lambda/functions"), taskLabels(task.id)]));
  if (!loaded) return;
  const [functions, labels] = loaded;
  const detectors = functions.filter((fn) => fn.kind === "detector");
  const reids = functions.filter((fn) => fn.kind === "reid");
  const problem = h("p", {class: "problem", role: "alert"});
  const model = h("select", {name: "model", required: true},
    h("option", {value: ""}, detectors.length || reids.length ? "Choose a model…" : "No detectors or ReID functions are deployed"),
    detectors.length ? h("optgroup", {label: "Detectors"}, detectors.map(functionOption)) : null,
    reids.length ? h("optgroup", {label: "ReID: link the task's rectangles into tracks"}, reids.map(functionOption)) : null);
  const chosen = () => functions.find((fn) => fn.id === model.value && OFFLINE_KINDS.includes(fn.kind)) || null;

  // A detector's options: label mapping, confidence threshold, polygons, cleanup, region.
  const mapping = h("div", {class: "mapping"});
  const threshold = h("input", {type: "number", name: "threshold", min: "0", max: "1", step: "0.01", placeholder: "the model's default"});
  const polygons = h("input", {type: "checkbox", name: "conv_mask_to_poly"});
  const cleanup = h("input", {type: "checkbox", name: "cleanup"});
  const region = regionPicker(task);
  const detectorOptions = h("div", {class: "detector-options"}, mapping,
    field("Threshold", threshold, "objects below it are dropped; empty: the model's own default"),
    h("label", {class: "check"}, polygons, "Return masks as polygons"),
    h("label", {class: "check"}, cleanup, "Clean old annotations"),
    region.element);
  // ReID's: CVAT's two numbers. ReID reads the task's rectangles, so no mapping, cleanup or region.
  const reidThreshold = h("input", {type: "number", name: "reid_threshold", min: "0", max: "1", step: "0.01",
    value: REID_THRESHOLD, required: true});
  const maxDistance = h("input", {type: "number", name: "max_distance", min: "0", step: "1", value: REID_MAX_DISTANCE, required: true});
  const reidOptions = h("div", {class: "reid-options"},
    h("p", {class: "muted"}, "ReID links the task's rectangles on consecutive frames into tracks: afterwards the ",
      "rectangles are the tracks' keyframes (the viewer shows them as tracks)."),
    field("Threshold", reidThreshold, "the largest cosine distance between two boxes' appearance that links them (0 to 1)"),
    field("Maximum distance", maxDistance, "the largest move of a box's centre from one frame to the next, in pixels"));
  const options = h("div", {class: "options"}, detectorOptions);

  const annotate = h("button", {type: "submit", value: "annotate"}, "Annotate");
  const form = h("form", {method: "dialog"},
    h("h2", {id: "annotate-title"}, "Automatic annotation"),
    h("p", {class: "muted"}, `Task ${task.id}: ${task.name} (${task.size} frames)`),
    field("Model", model), options,
    problem,
    h("div", {class: "buttons"}, annotate, h("button", {type: "button", class: "quiet", onclick: () => dialog.close()}, "Close")));
  const dialog = h("dialog", {"aria-labelledby": "annotate-title", class: "annotate-dialog"}, form);
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);

  // What the server refused is shown until the user changes something.
  form.addEventListener("input", () => { problem.textContent = ""; });

  let rows = [];
  model.addEventListener("change", () => {
    problem.textContent = "";
    const fn = chosen();
    // Only one set of options is in the dialog at a time (each has its own "Threshold").
    options.replaceChildren(fn && fn.kind === "reid" ? reidOptions : detectorOptions);
    rows = fn && fn.kind === "detector" ? fn.labels_v2.map((label) => mappingRow(label, labels)) : [];
    const table = (name, some) => h("table", {"aria-label": name},
      h("thead", {}, h("tr", {}, h("th", {scope: "col"}, "Model label"), h("th", {scope: "col"}, "Task label"))),
      h("tbody", {}, some.map((row) => row.element)));
    // A COCO model has 80 labels and a task a few: the matches first, the rest folded away.
    const matched = rows.filter((row) => row.select.value);
    const unmatched = rows.filter((row) => !row.select.value);
    const detector = fn && fn.kind === "detector";
    mapping.replaceChildren(
      matched.length ? table("Label mapping", matched) : "",
      detector && !matched.length && rows.length ? h("p", {class: "unmatched"}, "No model label has a task label of the same name; choose task labels below.") : "",
      unmatched.length ? h("details", {open: !matched.length},
        h("summary", {}, `${unmatched.length} model label(s) without a task label of the same name`),
        table("Unmatched model labels", unmatched)) : "",
      detector && !fn.labels_v2.length ? h("p", {class: "muted"}, "This model declares no labels.") : "");
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    problem.textContent = "";
    const fn = chosen();
    if (!fn) { problem.textContent = "Choose a model."; return; }
    let body;
    if (fn.kind === "reid") {
      if (reidThreshold.value === "" || maxDistance.value === "") { problem.textContent = "Give a threshold and a maximum distance."; return; }
      body = {function: fn.id, task: task.id, threshold: Number(reidThreshold.value), max_distance: Number(maxDistance.value)};
    } else {
      const labelled = rows.filter((row) => row.select.value);
      if (rows.length && !labelled.length) { problem.textContent = "Match at least one model label to a task label."; return; }
      const roi = region.value();
      if (roi === undefined) { problem.textContent = "Give all four of the region's x, y, width and height, or clear the region."; return; }
      body = {function: fn.id, task: task.id, cleanup: cleanup.checked, conv_mask_to_poly: polygons.checked,
        mapping: Object.fromEntries(labelled.map((row) => [row.label.name, row.value()]))};
      if (threshold.value !== "") body.threshold = Number(threshold.value);
      if (roi) body.roi = roi;
    }
    annotate.disabled = true;
    api("POST", "/api/lambda/requests", {json: body})
      .then((request) => { dialog.close(); started(request); })
      .catch((error) => { problem.textContent = error.message; })
      .finally(() => { annotate.disabled = false; });
  });
  dialog.showModal();
}

// The dialog's optional region: x, y, width and height in frame pixels, and the task's first frame
// in a canvas to drag the region on; the fields and the drawing follow each other. value(): null
// (no region), [xtl, ytl, xbr, ybr], or undefined when the fields are only partly filled.
function regionPicker(task) {
  const input = (name) => h("input", {type: "number", name: `region_${name}`, min: "0", step: "1", inputmode: "numeric"});
  const fields = {x: input("x"), y: input("y"), width: input("width"), height: input("height")};
  const summary = h("summary", {}, "Region: the whole frame");
  const note = h("p", {class: "muted region-note"}, "Loading the task's first frame…");
  // The fields are the keyboard's way to the region; the picture is for the mouse.
  const canvas = h("canvas", {width: "560", height: "315", class: "region-canvas",
    "aria-label": "The task's first frame: drag across it to draw the region"});
  const clear = h("button", {type: "button", class: "quiet"}, "Clear");
  const element = h("details", {class: "region"}, summary,
    h("fieldset", {},
      h("legend", {}, "Region"),
      h("p", {class: "muted"}, "Annotate only inside this rectangle of every frame, in frame pixels: drag across the ",
        "picture or type the numbers. Empty: the whole frame."),
      h("div", {class: "row"}, field("x", fields.x), field("y", fields.y), field("width", fields.width), field("height", fields.height),
        h("div", {class: "buttons"}, clear)),
      note, canvas));
  let image = null;
  let bounds = null; // [width, height] a region must fit in: every frame's (the smallest of each)
  let drag = null;

  function read() {
    const values = Object.values(fields).map((f) => f.value.trim());
    if (values.every((v) => v === "")) return null;
    if (values.some((v) => v === "")) return undefined;
    const [x, y, width, height] = values.map(Number);
    return [x, y, x + width, y + height];
  }

  function show() {
    const region = read();
    summary.textContent = region ? `Region: ${describeRegion(region)}` : region === null ? "Region: the whole frame" : "Region: incomplete";
    if (!image) return;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0, canvas.width, canvas.height);
    if (!region) return;
    const scale = canvas.width / image.width;
    const [x1, y1, x2, y2] = region.map((v) => v * scale);
    context.save();
    context.fillStyle = "rgba(0, 0, 0, 0.5)"; // the frame outside the region, dimmed
    context.beginPath();
    context.rect(0, 0, canvas.width, canvas.height);
    context.rect(x1, y1, x2 - x1, y2 - y1);
    context.fill("evenodd");
    context.lineWidth = 2;
    context.setLineDash([6, 4]);
    context.strokeStyle = REGION_COLOUR;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    context.restore();
  }

  async function load() {
    if (!task.size) { note.textContent = "This task has no frames yet."; canvas.hidden = true; return; }
    try {
      const [blob, meta] = await Promise.all([
        api("GET", `/api/tasks/${task.id}/data?type=frame&number=0`, {blob: true}),
        api("GET", `/api/tasks/${task.id}/data/meta`)]);
      image = await createImageBitmap(blob);
      bounds = [Math.min(...meta.frames.map((f) => f.width)), Math.min(...meta.frames.map((f) => f.height))];
      const scale = Math.min(1, 560 / image.width, 315 / image.height);
      canvas.width = Math.max(1, Math.round(image.width * scale));
      canvas.height = Math.max(1, Math.round(image.height * scale));
      const first = meta.frames[0];
      const same = meta.frames.every((f) => f.width === first.width && f.height === first.height);
      note.textContent = `Frame 0 (${first.name}, ${first.width}×${first.height}), shown at ${Math.round(scale * 100)}%.`
        + (same ? "" : ` Frames differ in size: the region must fit every frame, within ${bounds[0]}×${bounds[1]}.`);
      show();
    } catch (error) {
      note.textContent = `The first frame cannot be shown: ${error.message}`;
      note.classList.add("problem");
      canvas.hidden = true;
    }
  }
  element.addEventListener("toggle", () => { if (element.open && !image && !canvas.hidden) load(); });

  // Frame pixels under the pointer, kept inside the area every frame has.
  const framePoint = (event) => {
    const rect = canvas.getBoundingClientRect();
    const [width, height] = bounds;
    return [Math.min(width, Math.max(0, Math.round((event.clientX - rect.left) * image.width / rect.width))),
      Math.min(height, Math.max(0, Math.round((event.clientY - rect.top) * image.height / rect.height)))];
  };
  const setFields = (region) => {
    const [x1, y1, x2, y2] = region || [];
    const values = region ? [x1, y1, x2 - x1, y2 - y1].map(String) : ["", "", "", ""];
    Object.values(fields).forEach((f, index) => { f.value = values[index]; });
    show();
  };
  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 || !image) return;
    canvas.setPointerCapture(event.pointerId);
    drag = {start: framePoint(event), before: Object.values(fields).map((f) => f.value)};
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const [x1, y1] = drag.start;
    const [x2, y2] = framePoint(event);
    setFields([Math.min(x1, x2), Math.min(y1, y2), Math.max(x1, x2), Math.max(y1, y2)]);
  });
  const release = (event) => {
    if (!drag) return;
    const [x1, y1] = drag.start;
    const [x2, y2] = framePoint(event);
    const {before} = drag;
    drag = null;
    if (Math.abs(x2 - x1) < 2 || Math.abs(y2 - y1) < 2) { // a click, no drag: the region stays as it was
      Object.values(fields).forEach((f, index) => { f.value = before[index]; });
      show();
    } else setFields([Math.min(x1, x2), Math.min(y1, y2), Math.max(x1, x2), Math.max(y1, y2)]);
  };
  canvas.addEventListener("pointerup", release);
  canvas.addEventListener("pointercancel", release);
  for (const f of Object.values(fields)) f.addEventListener("input", show);
  clear.addEventListener("click", () => setFields(null));

  return {element, value: read};
}

function mappingRow(modelLabel, taskLabels) {
  const candidates = taskLabels.filter((label) => compatible(modelLabel.type || "any", label.type));
  const byName = candidates.find((label) => label.name === modelLabel.name);
  const note = h("small", {class: "unmatched"}, byName ? "" : (taskLabels.some((l) => l.name === modelLabel.name)
    ? ` the task's “${modelLabel.name}” has an incompatible type` : " no task label of this name"));
  const select = h("select", {"aria-label": `Task label for model label ${modelLabel.name}`,
    onchange: () => { note.textContent = select.value ? "" : " not annotated"; }},
    h("option", {value: ""}, "(not annotated)"),
    candidates.map((label) => h("option", {value: label.name, selected: label === byName}, label.name)));
  const element = h("tr", {class: byName ? "" : "unmatched", dataset: {modelLabel: modelLabel.name}},
    h("td", {}, modelLabel.name), h("td", {}, select, note));
  return {
    label: modelLabel, select, element,
    // Attributes follow by name, as CVAT's dialog pre-fills them.
    value() {
      const taskLabel = taskLabels.find((label) => label.name === select.value);
      const names = new Set((taskLabel.attributes || []).map((a) => a.name));
      const attributes = (modelLabel.attributes || []).filter((a) => names.has(a.name));
      return {name: select.value, attributes: Object.fromEntries(attributes.map((a) => [a.name, a.name]))};
    },
  };
}

// The requests of one task (or all), polled while any is still running.
export function requestsPanel(taskId, changed) {
  const element = h("div", {class: "requests", "aria-live": "polite"});
  let timer = null;
  let stopped = false;
  const seenRunning = new Set();
  // Function kinds, once: a ReID request counts frame pairs, not frames. Without them (the list
  // failed to load) a request that carries max_distance is taken for ReID.
  const kinds = api("GET", "/api/lambda/functions")
    .then((functions) => new Map(functions.map((fn) => [fn.id, fn.kind])))
    .catch(() => new Map());

  async function refresh() {
    clearTimeout(timer);
    let requests;
    let kindOf;
    try {
      [requests, kindOf] = await Promise.all([api("GET", "/api/lambda/requests"), kinds]);
    } catch (error) {
      showError(error);
      return;
    }
    if (stopped) return;
    requests = requests.filter((r) => taskId === null || r.function.task === taskId)
      .sort((a, b) => (b.enqueued || "").localeCompare(a.enqueued || ""));
    const isReid = (request) => (kindOf.get(request.function.id) || (request.function.max_distance !== undefined ? "reid" : "detector")) === "reid";
    element.replaceChildren(...(requests.length ? requests.map((r) => requestView(r, isReid(r))) : [h("p", {class: "muted"}, "No requests yet.")]));
    let ended = false;
    for (const request of requests) {
      if (!FINAL.includes(request.status)) seenRunning.add(request.id);
      else if (seenRunning.delete(request.id)) ended = true;
    }
    // The task's numbers (annotation count) follow the requests while they run.
    if (changed && (ended || requests.some((r) => !FINAL.includes(r.status)))) changed();
    clearTimeout(timer); // two refreshes in flight (a poll and a click) must leave one timer
    if (requests.some((r) => !FINAL.includes(r.status))) timer = setTimeout(refresh, POLL_MS);
  }

  function requestView(request, reid) {
    const {total, done, failed} = request.frames;
    const running = !FINAL.includes(request.status);
    const status = shownStatus(request);
    const units = reid ? "frame pairs" : "frames";
    const cancel = h("button", {type: "button", class: "danger", disabled: request.cancel_requested,
      onclick: (event) => guarded(async () => {
        await api("DELETE", `/api/lambda/requests/${request.id}`);
        await refresh();
      }, event.currentTarget)}, request.cancel_requested ? "Cancelling…" : "Cancel");
    const roi = request.function.roi;
    return h("article", {class: "request", dataset: {request: request.id, status}},
      h("p", {}, h("strong", {}, request.function.id), ` on task ${request.function.task}`,
        request.function.job ? `, job ${request.function.job}` : "",
        roi ? h("span", {class: "request-region"}, `, region ${describeRegion(roi)}`) : "", " · ",
        h("span", {class: `status status-${status}`}, status === "cancelling" ? "Cancelling…" : status.replace("_", " "))),
      h("progress", {max: String(total || 1), value: String(done + failed),
        "aria-label": `Progress of request ${request.id}`}),
      h("p", {class: "numbers"},
        h("span", {class: "done"}, `${done} / ${total} ${units}`),
        h("span", {class: "failed"}, `${failed} failed`),
        h("span", {class: "fps"}, `${request.fps.toFixed(1)} ${reid ? "pairs" : "frames"}/s`),
        running ? h("span", {class: "eta"}, status === "cancelling"
          ? `stopping after the ${units} in progress` : `ETA ${formatSeconds(request.eta_seconds)}`) : null),
      running ? h("div", {class: "buttons"}, cancel) : h("p", {class: "outcome"}, outcome(request, reid)),
      request.failures.length ? h("details", {}, h("summary", {}, `Failed ${units} (${request.failures.length})`),
        h("ul", {}, request.failures.map((f) => h("li", {}, `frame ${f.frame}: ${f.reason}`)))) : null);
  }

  refresh();
  return {element, refresh, stop: () => { stopped = true; clearTimeout(timer); }};
}

// What the list shows: the API reports a canceled run as failed, for CVAT's UI, and cancel_requested
// tells the two apart; a run asked to cancel whose last chunk is still stopping is "cancelling". A
// run in which some frames failed is finished for CVAT's UI; its outcome says partly_failed.
function shownStatus(request) {
  if (request.cancel_requested && !FINAL.includes(request.status)) return "cancelling";
  if (request.status === "failed" && request.cancel_requested) return "canceled";
  return request.outcome === "partly_failed" ? "partly_failed" : request.status;
}

function outcome(request, reid) {
  const {done, failed} = request.frames;
  if (request.status === "finished") {
    if (reid) {
      return done ? `Finished: ${done} frame pairs linked${failed ? `, ${failed} failed` : ""}; the task's rectangles are now tracks.`
        : "Finished: no rectangles on consecutive frames to link.";
    }
    return `Finished: ${done} frames annotated${failed ? `, ${failed} failed` : ""}.`;
  }
  if (shownStatus(request) === "canceled") return request.exc_info;
  return `Failed: ${request.exc_info || "no reason was given"}`;
}
