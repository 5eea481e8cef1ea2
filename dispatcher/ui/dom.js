// h("tag", {attribute: value, onclick: fn}, ...children): the one DOM-building helper.
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(element.dataset, value);
    else if (value === true) element.setAttribute(key, "");
    else element.setAttribute(key, value);
  }
  element.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return element;
}

export function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const whole = Math.round(seconds);
  const minutes = Math.floor(whole / 60);
  return minutes ? `${minutes} min ${whole % 60} s` : `${whole} s`;
}

// A field: <div class=field><label for=id>text</label>control</div>, so every input has its label.
let fieldCount = 0;
export function field(text, control, hint) {
  control.id ||= `field-${++fieldCount}`;
  return h("div", {class: "field"}, h("label", {for: control.id}, text), control,
    hint ? h("small", {class: "muted"}, hint) : null);
}

// A stable colour per label id.
export function labelColour(id) {
  const hue = (Number(id) * 137.508) % 360;
  return `hsl(${hue.toFixed(0)} 85% 52%)`;
}
