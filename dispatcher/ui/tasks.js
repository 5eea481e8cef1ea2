// Tasks: the list, creating a task (labels with attributes, uploaded or server files), and one
// task's page with its requests, exports and the Automatic annotation dialog.
import {api, guarded, listAll, showError, taskLabels} from "./api.js";
import {openAnnotateDialog, requestsPanel} from "./annotate.js";
import {field, h} from "./dom.js";
import {labelList} from "./models.js";

const LABEL_TYPES = ["any", "rectangle", "polygon", "polyline", "points", "ellipse", "cuboid", "mask", "tag"];
const INPUT_TYPES = ["select", "radio", "checkbox", "text", "number"];

export async function tasksPage(view) {
  const list = h("div", {}, h("p", {}, "Loading…"));
  const requests = requestsPanel(null, () => refresh());
  view.replaceChildren(h("h1", {}, "Tasks"), list,
    h("section", {class: "card", "aria-labelledby": "requests-title"},
      h("h2", {id: "requests-title"}, "Annotation requests"), requests.element),
    h("section", {class: "card", "aria-labelledby": "create-title"},
      h("h2", {id: "create-title"}, "Create a task"), await createTaskForm(() => refresh())));

  async function refresh() {
    const {results} = await api("GET", "/api/tasks?page_size=1000");
    const rows = [...list.querySelectorAll("tr[data-task]")];
    if (rows.length && rows.map((row) => row.dataset.task).join() === results.map((task) => task.id).join()) {
      // Same tasks: update the numbers in place, so a poll never moves what the user is about to click.
      results.forEach((task, index) => {
        rows[index].querySelector(".frames").textContent = String(task.size);
        rows[index].querySelector(".annotations").textContent = String(task.annotations_count);
      });
      return;
    }
    // Every task's labels in one list (CVAT's task holds only their URL), by task.
    const labels = new Map(results.map((task) => [task.id, []]));
    for (const label of results.length ? await listAll("/api/labels") : []) labels.get(label.task_id)?.push(label);
    list.replaceChildren(results.length ? tasksTable(results, labels, refresh, requests.refresh)
      : h("p", {}, "No tasks yet: create one below."));
  }
  await refresh();
  return requests.stop;
}

// labels: task id -> the task's labels.
function tasksTable(tasks, labels, refresh, refreshRequests) {
  return h("table", {"aria-label": "Tasks"},
    h("thead", {}, h("tr", {}, ["Id", "Name", "Frames", "Annotations", "Labels", "Actions"].map((text) => h("th", {scope: "col"}, text)))),
    h("tbody", {}, tasks.map((task) => h("tr", {dataset: {task: task.id}},
      h("td", {}, String(task.id)),
      h("td", {}, h("a", {href: `#/tasks/${task.id}`}, task.name)),
      h("td", {class: "frames"}, String(task.size)),
      h("td", {class: "annotations"}, String(task.annotations_count)),
      h("td", {}, labels.get(task.id).map((label) => label.name).join(", ")),
      h("td", {class: "buttons"},
        h("a", {class: "button quiet", href: `#/tasks/${task.id}/frames/0`, "aria-label": `View task ${task.name}`}, "View"),
        h("button", {type: "button", "aria-label": `Automatic annotation of task ${task.name}`,
          onclick: () => openAnnotateDialog(task, refreshRequests)}, "Automatic annotation"),
        h("button", {type: "button", class: "danger", "aria-label": `Delete task ${task.name}`,
          onclick: (event) => deleteTask(task, event.currentTarget, refresh)}, "Delete"))))));
}

async function deleteTask(task, button, done) {
  if (!confirm(`Delete task ${task.id} “${task.name}” with its frames and annotations?`)) return;
  await guarded(async () => {
    await api("DELETE", `/api/tasks/${task.id}`);
    await done();
  }, button);
}

// The create form: name, labels editor, and frames from uploads or from the server's files.
async function createTaskForm(created) {
  const name = h("input", {name: "name", required: true, autocomplete: "off"});
  const labels = labelsEditor();
  const frames = framesPicker();
  const submit = h("button", {type: "submit"}, "Create task");
  const form = h("form", {"aria-label": "Create a task"}, field("Name", name),
    h("h3", {}, "Labels"), labels.element, h("h3", {}, "Frames"), frames.element, h("div", {class: "buttons"}, submit));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(async () => {
      const task = await api("POST", "/api/tasks", {json: {name: name.value, labels: labels.value()}});
      try {
        await frames.send(task.id);
      } catch (error) {
        showError(error);
        showError(`Task ${task.id} was created without frames; add them on its page.`);
      }
      form.reset();
      labels.reset();
      frames.reset();
      await created();
    }, submit);
  });
  return form;
}

function labelsEditor() {
  let state = [{name: "", type: "any", attributes: []}];
  const element = h("div", {class: "labels-editor"});
  const modelPicker = h("select", {"aria-label": "Model to copy labels from"}, h("option", {value: ""}, "Copy labels from a model…"));
  api("GET", "/api/lambda/functions").then((functions) => {
    for (const fn of functions.filter((f) => f.labels_v2.length)) modelPicker.append(h("option", {value: fn.id}, fn.name));
    modelPicker.functions = functions;
  }).catch(showError);
  modelPicker.addEventListener("change", () => {
    const fn = (modelPicker.functions || []).find((f) => f.id === modelPicker.value);
    if (!fn) return;
    state = fn.labels_v2.map((label) => structuredClone(label));
    modelPicker.value = "";
    render();
  });

  function render() {
    element.replaceChildren(...state.map((label, index) => labelFieldset(label, index)),
      h("div", {class: "buttons"},
        h("button", {type: "button", class: "quiet", onclick: () => { state.push({name: "", type: "any", attributes: []}); render(); }}, "Add label"),
        modelPicker));
  }

  function labelFieldset(label, index) {
    const nameInput = h("input", {value: label.name, required: true, autocomplete: "off",
      oninput: (event) => { label.name = event.target.value; }});
    const typeSelect = h("select", {onchange: (event) => { label.type = event.target.value; }},
      LABEL_TYPES.map((type) => h("option", {value: type, selected: type === label.type}, type)));
    return h("fieldset", {},
      h("legend", {}, `Label ${index + 1}`),
      h("div", {class: "row"}, field("Label name", nameInput), field("Shape type", typeSelect),
        h("button", {type: "button", class: "quiet", onclick: () => { label.attributes.push({name: "", input_type: "select", values: []}); render(); }}, "Add attribute"),
        state.length > 1 ? h("button", {type: "button", class: "quiet", "aria-label": `Remove label ${index + 1}`,
          onclick: () => { state.splice(index, 1); render(); }}, "Remove") : null),
      label.attributes.map((attribute, attributeIndex) => attributeRow(label, attribute, attributeIndex)));
  }

  function attributeRow(label, attribute, index) {
    return h("div", {class: "attribute"},
      field("Attribute name", h("input", {value: attribute.name, required: true, autocomplete: "off",
        oninput: (event) => { attribute.name = event.target.value; }})),
      field("Input", h("select", {onchange: (event) => { attribute.input_type = event.target.value; }},
        INPUT_TYPES.map((type) => h("option", {value: type, selected: type === attribute.input_type}, type)))),
      field("Values", h("input", {value: attribute.values.join(", "), autocomplete: "off",
        oninput: (event) => { attribute.values = event.target.value.split(",").map((v) => v.trim()).filter(Boolean); }}),
        "comma-separated; number: min, max, step"),
      h("button", {type: "button", class: "quiet", "aria-label": `Remove attribute ${index + 1} of ${label.name || "this label"}`,
        onclick: () => { label.attributes.splice(index, 1); render(); }}, "Remove"));
  }

  render();
  return {
    element,
    value: () => state.map(({name, type, attributes, sublabels, svg}) => ({
      name, type, attributes: attributes.map(({name: attributeName, input_type, values}) => ({name: attributeName, input_type, values})),
      ...(type === "skeleton" ? {sublabels, svg} : {})})),
    reset: () => { state = [{name: "", type: "any", attributes: []}]; render(); },
  };
}

// Frames: a file upload, or a browser of the server's files (CVAT's /api/server/share).
export function framesPicker() {
  const chosen = new Set();
  const upload = h("input", {type: "file", name: "client_files", multiple: true, accept: "image/*"});
  const browser = h("div", {class: "files", role: "group", "aria-label": "Server files"});
  const summary = h("p", {class: "muted", "aria-live": "polite"});
  const useServer = h("input", {type: "radio", name: "frames-source", value: "server"});
  const useUpload = h("input", {type: "radio", name: "frames-source", value: "upload", checked: true});
  const element = h("div", {},
    h("div", {class: "row", role: "radiogroup", "aria-label": "Where the frames come from"},
      h("label", {class: "check"}, useUpload, "Upload images"),
      h("label", {class: "check"}, useServer, "Files on the server")),
    h("div", {class: "upload-source"}, field("Images to upload", upload)),
    h("div", {class: "server-source", hidden: true}, browser, summary));
  const show = () => {
    element.querySelector(".upload-source").hidden = !useUpload.checked;
    element.querySelector(".server-source").hidden = !useServer.checked;
    if (useServer.checked && !browser.childElementCount) browse("");
  };
  useServer.addEventListener("change", show);
  useUpload.addEventListener("change", show);

  async function browse(directory) {
    let entries;
    try {
      entries = await api("GET", `/api/server/share?directory=${encodeURIComponent(directory || "/")}`);
    } catch (error) {
      browser.replaceChildren(h("p", {class: "problem"}, error.detail || error.message));
      return;
    }
    const path = (name) => (directory ? `${directory}/${name}` : name);
    const allImages = entries.filter((e) => e.type === "REG" && e.mime_type === "image").map((e) => path(e.name));
    browser.replaceChildren(
      h("p", {}, h("strong", {}, `/${directory}`), " ",
        directory ? h("button", {type: "button", class: "quiet", onclick: () => browse(directory.split("/").slice(0, -1).join("/"))}, "Up") : null,
        allImages.length ? h("button", {type: "button", class: "quiet", onclick: () => {
          allImages.forEach((p) => chosen.add(p)); browse(directory); count(); }}, `Select all ${allImages.length} images`) : null),
      h("ul", {}, entries.map((entry) => entry.type === "DIR"
        ? h("li", {}, h("button", {type: "button", class: "quiet", onclick: () => browse(path(entry.name))}, `📁 ${entry.name}/`))
        : h("li", {}, h("label", {class: "check"},
          h("input", {type: "checkbox", value: path(entry.name), checked: chosen.has(path(entry.name)),
            disabled: entry.mime_type !== "image",
            onchange: (event) => { event.target.checked ? chosen.add(event.target.value) : chosen.delete(event.target.value); count(); }}),
          entry.name)))));
  }
  const count = () => { summary.textContent = `${chosen.size} server file(s) selected`; };

  return {
    element,
    async send(taskId) {
      const form = new FormData();
      if (useServer.checked) {
        if (!chosen.size) throw new Error("Choose at least one server file.");
        [...chosen].sort().forEach((path, index) => form.append(`server_files[${index}]`, path));
      } else {
        if (!upload.files.length) throw new Error("Choose at least one image to upload.");
        [...upload.files].forEach((file, index) => form.append(`client_files[${index}]`, file, file.name));
      }
      return api("POST", `/api/tasks/${taskId}/data`, {form});
    },
    reset() { chosen.clear(); upload.value = ""; browser.replaceChildren(); useUpload.checked = true; show(); count(); },
  };
}

export async function taskPage(view, taskId) {
  const [task, labels] = await Promise.all([api("GET", `/api/tasks/${taskId}`), taskLabels(taskId)]);
  const requests = requestsPanel(taskId, () => refreshTask());
  const numbers = h("p", {class: "task-numbers"});
  const frames = framesPicker();
  const addButton = h("button", {type: "button"}, "Add frames");
  addButton.addEventListener("click", () => guarded(async () => {
    await frames.send(taskId);
    frames.reset();
    await refreshTask();
  }, addButton));

  async function refreshTask() {
    Object.assign(task, await api("GET", `/api/tasks/${taskId}`));
    numbers.replaceChildren(`${task.size} frames · ${task.annotations_count} annotations · `,
      `${task.jobs.count} job(s) · created ${new Date(task.created_date).toLocaleString()}`);
  }
  await refreshTask();

  const download = (format) => async (event) => guarded(async () => {
    const file = await api("GET", `/api/tasks/${taskId}/export?format=${format}`, {blob: true});
    const link = h("a", {href: URL.createObjectURL(file), download: `task_${taskId}_${format}.${format === "coco" ? "json" : "xml"}`});
    document.body.append(link);
    link.click();
    link.remove();
  }, event.currentTarget);

  view.replaceChildren(
    h("p", {}, h("a", {href: "#/tasks"}, "← Tasks")),
    h("h1", {}, `Task ${task.id}: ${task.name}`), numbers,
    h("div", {class: "buttons"},
      h("a", {class: "button", href: `#/tasks/${taskId}/frames/0`}, "Open the viewer"),
      h("button", {type: "button", onclick: () => openAnnotateDialog(task, requests.refresh)}, "Automatic annotation"),
      h("button", {type: "button", class: "quiet", onclick: download("coco")}, "Export COCO"),
      h("button", {type: "button", class: "quiet", onclick: download("cvat")}, "Export CVAT XML"),
      h("button", {type: "button", class: "danger", onclick: (event) => deleteTask(task, event.currentTarget, () => { location.hash = "#/tasks"; })}, "Delete task")),
    h("section", {class: "card", "aria-labelledby": "labels-title"}, h("h2", {id: "labels-title"}, "Labels"), labelList(labels)),
    h("section", {class: "card", "aria-labelledby": "requests-title"}, h("h2", {id: "requests-title"}, "Annotation requests"), requests.element),
    h("section", {class: "card", "aria-labelledby": "add-title"}, h("h2", {id: "add-title"}, "Add frames"), frames.element,
      h("div", {class: "buttons"}, addButton)));
  return requests.stop;
}
