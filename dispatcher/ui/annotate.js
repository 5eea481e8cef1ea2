// CVAT's "Automatic annotation" dialog, and the live list of annotation requests with progress,
// frames/s, ETA, failures and Cancel.
import {api, guarded, showError} from "./api.js";
import {field, formatSeconds, h} from "./dom.js";

const FINAL = ["finished", "failed", "canceled"];
const POLL_MS = 500;

// Section 4.3 of cvat-compat.md: which model label types may feed which task label types.
export function compatible(modelType, taskType) {
  return modelType === taskType
    || (taskType === "any" && modelType !== "skeleton")
    || (modelType === "any" && taskType !== "skeleton")
    || (["mask", "polygon"].includes(modelType) && ["mask", "polygon"].includes(taskType));
}

export async function openAnnotateDialog(task, started) {
  const functions = await guarded(() => api("GET", "/api/lambda/functions"));
  if (!functions) return;
  const detectors = functions.filter((fn) => fn.kind === "detector");
  const problem = h("p", {class: "problem", role: "alert"});
  const model = h("select", {name: "model", required: true},
    h("option", {value: ""}, detectors.length ? "Choose a model…" : "No detectors are deployed"),
    detectors.map((fn) => h("option", {value: fn.id, disabled: fn.state !== "ready"},
      fn.state === "ready" ? fn.name : `${fn.name} (${fn.state}${fn.message ? `: ${fn.message}` : ""})`)));
  const mapping = h("div", {class: "mapping"});
  const threshold = h("input", {type: "number", name: "threshold", min: "0", max: "1", step: "0.01", placeholder: "the model's default"});
  const polygons = h("input", {type: "checkbox", name: "conv_mask_to_poly"});
  const cleanup = h("input", {type: "checkbox", name: "cleanup"});
  const annotate = h("button", {type: "submit", value: "annotate"}, "Annotate");
  const form = h("form", {method: "dialog"},
    h("h2", {id: "annotate-title"}, "Automatic annotation"),
    h("p", {class: "muted"}, `Task ${task.id}: ${task.name} (${task.size} frames)`),
    field("Model", model), mapping,
    field("Threshold", threshold, "objects below it are dropped; empty: the model's own default"),
    h("label", {class: "check"}, polygons, "Return masks as polygons"),
    h("label", {class: "check"}, cleanup, "Clean old annotations"),
    problem,
    h("div", {class: "buttons"}, annotate, h("button", {type: "button", class: "quiet", onclick: () => dialog.close()}, "Close")));
  const dialog = h("dialog", {"aria-labelledby": "annotate-title", class: "annotate-dialog"}, form);
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);

  let rows = [];
  model.addEventListener("change", () => {
    const fn = detectors.find((f) => f.id === model.value);
    rows = fn ? fn.labels_v2.map((label) => mappingRow(label, task.labels)) : [];
    const table = (name, some) => h("table", {"aria-label": name},
      h("thead", {}, h("tr", {}, h("th", {scope: "col"}, "Model label"), h("th", {scope: "col"}, "Task label"))),
      h("tbody", {}, some.map((row) => row.element)));
    // A COCO model has 80 labels and a task a few: the matches first, the rest folded away.
    const matched = rows.filter((row) => row.select.value);
    const unmatched = rows.filter((row) => !row.select.value);
    mapping.replaceChildren(
      matched.length ? table("Label mapping", matched) : "",
      fn && !matched.length && rows.length ? h("p", {class: "unmatched"}, "No model label has a task label of the same name; choose task labels below.") : "",
      unmatched.length ? h("details", {open: !matched.length},
        h("summary", {}, `${unmatched.length} model label(s) without a task label of the same name`),
        table("Unmatched model labels", unmatched)) : "",
      fn && !fn.labels_v2.length ? h("p", {class: "muted"}, "This model declares no labels.") : "");
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    problem.textContent = "";
    const chosen = rows.filter((row) => row.select.value);
    if (!model.value) { problem.textContent = "Choose a model."; return; }
    if (rows.length && !chosen.length) { problem.textContent = "Match at least one model label to a task label."; return; }
    const body = {function: model.value, task: task.id, cleanup: cleanup.checked, conv_mask_to_poly: polygons.checked,
      mapping: Object.fromEntries(chosen.map((row) => [row.label.name, row.value()]))};
    if (threshold.value !== "") body.threshold = Number(threshold.value);
    annotate.disabled = true;
    api("POST", "/api/lambda/requests", {json: body})
      .then((request) => { dialog.close(); started(request); })
      .catch((error) => { problem.textContent = error.message; })
      .finally(() => { annotate.disabled = false; });
  });
  dialog.showModal();
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

  async function refresh() {
    clearTimeout(timer);
    let requests;
    try {
      requests = await api("GET", "/api/lambda/requests");
    } catch (error) {
      showError(error);
      return;
    }
    if (stopped) return;
    requests = requests.filter((r) => taskId === null || r.function.task === taskId)
      .sort((a, b) => (b.enqueued || "").localeCompare(a.enqueued || ""));
    element.replaceChildren(...(requests.length ? requests.map(requestView) : [h("p", {class: "muted"}, "No requests yet.")]));
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

  function requestView(request) {
    const {total, done, failed} = request.frames;
    const running = !FINAL.includes(request.status);
    const cancel = h("button", {type: "button", class: "danger", disabled: request.cancel_requested,
      onclick: (event) => guarded(async () => {
        await api("DELETE", `/api/lambda/requests/${request.id}`);
        await refresh();
      }, event.currentTarget)}, request.cancel_requested ? "Cancelling…" : "Cancel");
    return h("article", {class: "request", dataset: {request: request.id, status: request.status}},
      h("p", {}, h("strong", {}, request.function.id), ` on task ${request.function.task}`,
        request.function.job ? `, job ${request.function.job}` : "", " · ",
        h("span", {class: `status status-${request.status}`}, request.status)),
      h("progress", {max: String(total || 1), value: String(done + failed),
        "aria-label": `Progress of request ${request.id}`}),
      h("p", {class: "numbers"},
        h("span", {class: "done"}, `${done} / ${total} frames`),
        h("span", {class: "failed"}, `${failed} failed`),
        h("span", {class: "fps"}, `${request.fps.toFixed(1)} frames/s`),
        running ? h("span", {class: "eta"}, `ETA ${formatSeconds(request.eta_seconds)}`) : null),
      running ? h("div", {class: "buttons"}, cancel) : h("p", {class: "outcome"}, outcome(request)),
      request.failures.length ? h("details", {}, h("summary", {}, `Failed frames (${request.failures.length})`),
        h("ul", {}, request.failures.map((f) => h("li", {}, `frame ${f.frame}: ${f.reason}`)))) : null);
  }

  refresh();
  return {element, refresh, stop: () => { stopped = true; clearTimeout(timer); }};
}

function outcome(request) {
  if (request.status === "finished") {
    return `Finished: ${request.frames.done} frames annotated${request.frames.failed ? `, ${request.frames.failed} failed` : ""}.`;
  }
  const word = request.status === "canceled" ? "Canceled" : "Failed";
  return `${word}: ${request.exc_info || "no reason was given"}`;
}
