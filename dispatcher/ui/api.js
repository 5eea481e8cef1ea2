// Every call to the dispatcher's HTTP API goes through api(): the bearer token (asked for when the
// server answers 401, kept in sessionStorage), JSON in and out, and errors as ApiError carrying the
// server's own {"detail"} message so pages can show it in words.
import {h} from "./dom.js";

const TOKEN_KEY = "api-token";

export class ApiError extends Error {
  constructor(status, detail, what) {
    super(`${what}: ${detail} (HTTP ${status})`);
    this.status = status;
    this.detail = detail;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

let tokenPrompt = null; // one prompt at a time, shared by every call that got a 401

export function askForToken(problem) {
  if (tokenPrompt) return tokenPrompt;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  const problemText = document.getElementById("token-problem");
  problemText.hidden = !problem;
  problemText.textContent = problem || "";
  input.value = "";
  tokenPrompt = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      tokenPrompt = null;
      if (dialog.returnValue === "save" && input.value.trim()) {
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        resolve(true);
      } else {
        if (dialog.returnValue === "forget") sessionStorage.removeItem(TOKEN_KEY);
        resolve(false);
      }
    }, {once: true});
  });
  dialog.returnValue = "";
  dialog.showModal();
  return tokenPrompt;
}

async function detailOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.detail === "string") return body.detail;
    return text;
  } catch {
    return text || response.statusText;
  }
}

// api("GET", "/api/tasks") -> parsed JSON (or null for 204); {json}, {form} (FormData) or {blob: true}.
export async function api(method, path, {json, form, blob} = {}) {
  for (;;) {
    const headers = {};
    if (token()) headers.Authorization = `Bearer ${token()}`;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    let response;
    try {
      response = await fetch(path, {method, headers, body});
    } catch (error) {
      throw new ApiError(0, `the server cannot be reached (${error.message})`, `${method} ${path}`);
    }
    if (response.status === 401) {
      const problem = token() ? "The server refused this token." : null;
      if (await askForToken(problem)) continue;
      throw new ApiError(401, await detailOf(response), `${method} ${path}`);
    }
    if (!response.ok) throw new ApiError(response.status, await detailOf(response), `${method} ${path}`);
    if (blob) return response.blob();
    if (response.status === 204) return null;
    return response.json();
  }
}

// Every item of one of CVAT's paginated lists ({count, next, previous, results}), page by page.
export async function listAll(path) {
  const results = [];
  for (let page = 1; ; page += 1) {
    const body = await api("GET", `${path}${path.includes("?") ? "&" : "?"}page=${page}&page_size=1000`);
    results.push(...body.results);
    if (!body.next) return results;
  }
}

// A task's labels (sublabels inside their skeletons): CVAT keeps them out of the task, which has
// only their URL (and its jobs' count and URL).
export const taskLabels = (taskId) => listAll(`/api/labels?task_id=${taskId}`);

// Errors are shown in words at the top of the page until dismissed; never swallowed.
export function showError(error) {
  const message = error instanceof ApiError ? error.message : String(error && error.message || error);
  console.error(error);
  const box = h("div", {class: "error"}, h("p", {}, message),
    h("button", {type: "button", "aria-label": "Dismiss this message", onclick: () => box.remove()}, "×"));
  document.getElementById("errors").append(box);
}

export function clearErrors() {
  document.getElementById("errors").replaceChildren();
}

// Run an async action from a button: disable it meanwhile, show what went wrong.
export async function guarded(action, button) {
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (error) {
    showError(error);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}
