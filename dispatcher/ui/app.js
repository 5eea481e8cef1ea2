// The web UI: a hash router over four pages. Each page renders into <main> and may return a
// function that stops what it started (polling, key handlers) when the user leaves.
import {askForToken, clearErrors, showError} from "./api.js";
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

async function route() {
  const hash = location.hash || "#/tasks";
  const match = routes.map(([pattern, page]) => [hash.match(pattern), page]).find(([found]) => found);
  if (leavePage) leavePage();
  leavePage = null;
  clearErrors();
  const view = document.getElementById("view");
  for (const link of document.querySelectorAll("header nav a")) {
    const current = hash.startsWith(link.getAttribute("href"));
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!match) {
    view.replaceChildren();
    showError(`There is no page at ${hash}.`);
    return;
  }
  const [found, page] = match;
  const params = found.slice(1).map(Number);
  try {
    leavePage = (await page(view, ...params)) || null;
  } catch (error) {
    showError(error);
  }
}

window.addEventListener("hashchange", route);
document.getElementById("token-button").addEventListener("click", async () => {
  if (await askForToken(null)) route();
});
route();
