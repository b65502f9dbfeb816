import { serverUrlProblem } from "./policy.js";
import { loadSettings } from "./settings.js";

const $ = (id) => document.getElementById(id);
const form = $("form");

loadSettings().then((s) => {
  form.mode.value = s.mode;
  $("serverUrl").value = s.serverUrl;
  $("apiKey").value = s.apiKey;
});

fetch(chrome.runtime.getURL("model/model.json")).then((r) => r.json()).then((m) => {
  $("model").textContent = `Local model: ${m.architecture}, ${m.input_size.join("x")} input, sha256 ${m.sha256.slice(0, 12)}, threshold ${m.threshold}`;
}, () => { $("model").textContent = "No local model in this build: local mode will fail; use server mode or rebuild with dfscan plugin build."; });

// A server URL that may not receive the API key is refused here, before anything is stored or
// fetched (the service worker refuses it again, whatever storage holds).
form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const serverUrl = $("serverUrl").value.trim();
  const problem = serverUrl ? serverUrlProblem(serverUrl) : "";
  $("problem").hidden = !problem;
  $("problem").textContent = problem;
  $("saved").textContent = problem ? "not saved" : "";
  if (problem) return;
  await chrome.storage.local.set({ mode: form.mode.value || "local", serverUrl, apiKey: $("apiKey").value.trim() });
  $("saved").textContent = "saved";
});
