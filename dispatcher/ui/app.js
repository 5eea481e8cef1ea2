// The web UI: a hash router over four pages. Each page renders into <main> and may return a
// function that stops what it started (polling, key handlers) when the user leaves.
import {ApiError, askForToken, clearErrors, showError} from "./api.js";
import {h} from "./dom.js";
import {modelsPage} from "./models.js";
import {taskPage, tasksPage} from "./tasks.js";
import {viewerPage} from "./viewer.js";

const routes = [
  [/^#\/models$/, modelsPage],
  [/^#\/tasks$/, tasksPage],
  [/^#\/tasks\/(\d+)$/, taskPage],
  [/^#\/tasks\/(\d+)\/frames\/(\d+)$/, viewerPage],
];

let leavePage = null;
let currentPage = null;

async function route() {
  const hash = location.hash || "#/tasks";
  const match = routes.map(([pattern, page]) => [hash.match(pattern), page]).find(([found]) => found);
  if (leavePage) leavePage();
  leavePage = null;
  clearErrors();
  // Each visit renders into a container of its own: a page still loading when the user moves on
  // (or when the token prompt returns late) finishes into a detached container, never over the
  // page that replaced it.
  const view = document.createElement("div");
  currentPage = view;
  document.getElementById("view").replaceChildren(view);
  for (const link of document.querySelectorAll("header nav a")) {
    const current = hash.startsWith(link.getAttribute("href"));
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!match) {
    view.replaceChildren(...notFound(`There is no page at ${hash}.`));
    return;
  }
  const [found, page] = match;
  const params = found.slice(1).map(Number);
  try {
    const leave = (await page(view, ...params)) || null;
    if (currentPage === view) leavePage = leave;
    else if (leave) leave(); // the user has already moved on
  } catch (error) {
    if (currentPage !== view) return;
    if (error instanceof ApiError && error.status === 404) view.replaceChildren(...notFound(error.message));
    else showError(error);
  }
}

// A page that is not there, with the ways back.
function notFound(why) {
  return [h("h1", {}, "Not found"), h("p", {}, why),
    h("p", {}, h("a", {href: "#/tasks"}, "← Back to the tasks"), " · ", h("a", {href: "#/models"}, "the models"))];
}

window.addEventListener("hashchange", route);
// The skip link moves focus, not the route (its #view would be read as a page address).
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  document.getElementById("view").focus();
});
document.getElementById("token-button").addEventListener("click", async () => {
  if (await askForToken(null)) route();
});
route();
