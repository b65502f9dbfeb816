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

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  await chrome.storage.local.set({
    mode: form.mode.value || "local", serverUrl: $("serverUrl").value.trim(), apiKey: $("apiKey").value.trim(),
  });
  $("saved").textContent = "saved";
});
