// The options page's choices, kept in chrome.storage.local (the API key included: it never leaves
// this profile except in the Authorization header to the configured server).
export const DEFAULTS = Object.freeze({
  mode: "local",          // "local": onnxruntime-web in the browser; "server": POST /v1/score
  serverUrl: "http://127.0.0.1:8000",
  apiKey: "",
  maxBytes: 32 * 1024 * 1024,  // the server's default --max-upload-bytes
});

export async function loadSettings() {
  return { ...DEFAULTS, ...(await chrome.storage.local.get(Object.keys(DEFAULTS))) };
}
