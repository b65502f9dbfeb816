// The service worker: the "Check with dfscan" context menu, fetching the image's bytes (with the
// extension's host permissions, so cross-origin images work; with the user's cookies only for an
// image of the tab's own site) and sending them either to the offscreen document (local mode) or
// to the team's `dfscan serve` (server mode, https only unless the server is this machine).
import { loadSettings } from "./settings.js";
import { sameSite, serverUrlProblem } from "./policy.js";
import { CheckError, fetchImage } from "./fetch.js";

const MENU_ID = "dfscan-check";

chrome.runtime.onInstalled.addListener(() => {
  chrome.contextMenus.create({ id: MENU_ID, title: "Check with dfscan", contexts: ["image"] });
});

chrome.contextMenus.onClicked.addListener(async (info) => {
  if (info.menuItemId !== MENU_ID) return;
  await chrome.storage.session.set({ last: { status: "checking", url: info.srcUrl } });
  try {
    await chrome.action.openPopup();
  } catch {
    await chrome.windows.create({ url: "popup.html", type: "popup", width: 420, height: 560 });
  }
  await chrome.storage.session.set({ last: await checkImage(info.srcUrl, info.pageUrl) });
});

chrome.runtime.onMessage.addListener((msg, _sender, reply) => {
  if (msg?.type !== "check" || msg.target) return false;
  checkImage(msg.url, msg.page).then(reply);  // only the extension's own pages can send messages
  return true;
});

/**
 * Check one image: what the context menu and the popup call. ``pageUrl`` is the tab's address:
 * the image is fetched with the user's cookies only when it is of the same site. Never throws;
 * errors are results.
 */
export async function checkImage(url, pageUrl = "") {
  const started = performance.now();
  const settings = await loadSettings();
  const credentials = sameSite(url, pageUrl) ? "include" : "omit";
  let result;
  try {
    const server = settings.mode === "server" ? serverBase(settings) : null;  // refused before any fetch
    const bytes = await fetchImage(url, settings.maxBytes, credentials);
    result = server ? await scoreOnServer(bytes, url, server, settings.apiKey) : await scoreLocally(bytes);
  } catch (e) {
    result = { status: "error", code: e.code || "failed", error: e.code ? e.message : String(e.message || e) };
  }
  return { ...result, url, credentials, mode: settings.mode, elapsed_ms: performance.now() - started };
}
globalThis.checkImage = checkImage;  // for the tests: the same path as the context menu

function toBase64(bytes) {
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

async function ensureOffscreen() {
  const url = chrome.runtime.getURL("offscreen.html");
  const have = await chrome.runtime.getContexts({ contextTypes: ["OFFSCREEN_DOCUMENT"], documentUrls: [url] });
  if (have.length) return;
  try {
    await chrome.offscreen.createDocument({
      url: "offscreen.html", reasons: ["WORKERS"],
      justification: "Run the dfscan ONNX model with onnxruntime-web (WASM) in the browser",
    });
  } catch (e) {
    if (!String(e.message).includes("single offscreen")) throw e;  // created meanwhile by another check
  }
}

async function scoreLocally(bytes) {
  await ensureOffscreen();
  const msg = { target: "offscreen", type: "score", bytes: toBase64(bytes) };
  let reply;
  for (let attempt = 0; ; attempt++) {
    try {
      reply = await chrome.runtime.sendMessage(msg);
      break;
    } catch (e) {  // the document exists but its module has not registered its listener yet
      if (attempt >= 50 || !String(e.message).includes("Receiving end")) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  if (!reply) throw new CheckError("model-load-failed", "the inference page did not answer");
  return reply;
}

/** The configured server's base URL, refused unless it may receive the API key (see policy.js). */
function serverBase(settings) {
  const base = String(settings.serverUrl || "").trim().replace(/\/+$/, "");
  if (!base) throw new CheckError("server-not-configured", "server mode: no server URL set (open the options page)");
  const problem = serverUrlProblem(base);
  if (problem) throw new CheckError("server-insecure", `${problem} (open the options page)`);
  return base;
}

async function scoreOnServer(bytes, url, base, apiKey) {
  const name = (new URL(url).pathname.split("/").pop() || "image").slice(0, 200);
  const form = new FormData();
  form.append("file", new Blob([bytes]), name);
  let resp;
  try {
    resp = await fetch(`${base}/v1/score`, {
      method: "POST", body: form, credentials: "omit",
      headers: { Authorization: `Bearer ${apiKey}` },
    });
  } catch (e) {
    throw new CheckError("server-unreachable", `the dfscan server at ${base} is unreachable`);
  }
  if (resp.status === 401 || resp.status === 403) {
    throw new CheckError("server-refused-key", `the dfscan server refused the API key (HTTP ${resp.status}); check it in the options page`);
  }
  let body = null;
  try { body = await resp.json(); } catch { /* reported below */ }
  if (!resp.ok) {
    const detail = body && (body.detail || body.error);
    throw new CheckError("server-error", `the dfscan server answered HTTP ${resp.status}${detail ? `: ${typeof detail === "string" ? detail : JSON.stringify(detail)}` : ""}`);
  }
  const row = body?.results?.[0];
  if (!row) throw new CheckError("server-error", "the dfscan server's answer has no result");
  if (row.status === "no-face") {
    return { status: "error", code: "no-face", error: "no face found in this image (the server's model scores faces)" };
  }
  if (row.status !== "ok") return { status: "error", code: row.error_code || "server-error", error: row.error || "error" };
  return {
    status: "ok", label: row.label, p_fake: row.p_fake, confidence: row.confidence,
    faces: row.faces, model_sha256: body.model_sha256, threshold: body.threshold,
    provenance: row.provenance && typeof row.provenance === "object" ? row.provenance : null,
  };
}
