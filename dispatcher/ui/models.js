// Models: every function the dispatcher knows, with its state, labels and help.
import {api} from "./api.js";
import {h} from "./dom.js";

const LABELS_SHOWN = 8; // more fold away: COCO's 80 would fill a screen per model

export function labelList(labels) {
  const chip = (label) => h("li", {},
    label.name,
    label.type && label.type !== "any" ? h("span", {class: "muted"}, ` (${label.type})`) : null,
    label.attributes && label.attributes.length
      ? h("span", {class: "muted"}, ` · ${label.attributes.map((a) => `${a.name}: ${a.values.join("/") || a.input_type}`).join("; ")}`)
      : null);
  const shown = h("ul", {class: "tags"}, labels.slice(0, LABELS_SHOWN).map(chip));
  if (labels.length <= LABELS_SHOWN) return shown;
  return h("div", {}, shown, h("details", {class: "more-labels"},
    h("summary", {}, `${labels.length - LABELS_SHOWN} more labels`),
    h("ul", {class: "tags"}, labels.slice(LABELS_SHOWN).map(chip))));
}

// The help animation: shown when it is served from here; elsewhere (CVAT's functions point at
// GitHub) a link, as the UI loads nothing from other hosts.
function usage(fn) {
  if (!fn.animated_gif) return null;
  const url = new URL(fn.animated_gif, location.href);
  if (url.origin === location.origin) return h("img", {src: url.href, alt: `How ${fn.name} is used`});
  return h("p", {}, h("a", {href: url.href, target: "_blank", rel: "noopener noreferrer"},
    `How ${fn.name} is used (an animation on ${url.host})`));
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
    usage(fn)));
  view.replaceChildren(h("h1", {}, "Models"),
    functions.length ? h("p", {class: "muted"}, `${functions.length} functions`) : h("p", {}, "No functions are deployed."),
    ...cards);
}
