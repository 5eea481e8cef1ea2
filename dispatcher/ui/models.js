// Models: every function the dispatcher knows, with its state, labels and help.
import {api} from "./api.js";
import {h} from "./dom.js";

export function labelList(labels) {
  return h("ul", {class: "tags"}, labels.map((label) => h("li", {},
    label.name,
    label.type && label.type !== "any" ? h("span", {class: "muted"}, ` (${label.type})`) : null,
    label.attributes && label.attributes.length
      ? h("span", {class: "muted"}, ` · ${label.attributes.map((a) => `${a.name}: ${a.values.join("/") || a.input_type}`).join("; ")}`)
      : null)));
}

export function stateText(fn) {
  return fn.state === "ready"
    ? h("span", {class: "state-ready"}, "ready")
    : h("span", {class: "state-other"}, fn.state + (fn.message ? `: ${fn.message}` : ""));
}

export async function modelsPage(view) {
  view.replaceChildren(h("h1", {}, "Models"), h("p", {}, "Loading…"));
  const functions = await api("GET", "/api/lambda/functions");
  const cards = functions.map((fn) => h("article", {class: "card model", "aria-labelledby": `model-${fn.id}`},
    h("div", {},
      h("h2", {id: `model-${fn.id}`}, fn.name),
      h("p", {class: "muted"}, h("code", {}, fn.id), ` · ${fn.kind} · version ${fn.version}`),
      h("p", {}, "State: ", stateText(fn)),
      fn.description ? h("p", {}, fn.description) : null,
      fn.kind === "interactor" ? h("p", {class: "muted"},
        `At least ${fn.min_pos_points} positive point(s)`,
        fn.startswith_box_optional ? "; a box first is optional" : fn.startswith_box ? "; starts with a box" : "") : null,
      fn.help_message ? h("p", {}, h("strong", {}, "Help: "), fn.help_message) : null,
      h("h3", {}, "Labels"),
      fn.labels_v2.length ? labelList(fn.labels_v2) : h("p", {class: "muted"}, "none (class-agnostic)")),
    fn.animated_gif ? h("img", {src: fn.animated_gif, alt: `How ${fn.name} is used`}) : null));
  view.replaceChildren(h("h1", {}, "Models"),
    functions.length ? h("p", {class: "muted"}, `${functions.length} functions`) : h("p", {}, "No functions are deployed."),
    ...cards);
}
