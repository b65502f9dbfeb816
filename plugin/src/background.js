// The service worker: the "Check with dfscan" context menu, fetching the image's bytes (with the
// extension's host permissions, so cross-origin images work) and sending them either to the
// offscreen document (local mode) or to the team's `dfscan serve` (server mode).
import { loadSettings } from "./settings.js";
import { sniffFormat } from "./preprocess.js";

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
  await chrome.storage.session.set({ last: await checkImage(info.srcUrl) });
});

chrome.runtime.onMessage.addListener((msg, _sender, reply) => {
  if (msg?.type !== "check" || msg.target) return false;
  checkImage(msg.url).then(reply);
  return true;
});

class CheckError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

/** Check one image: what the context menu and the popup call. Never throws; errors are results. */
export async function checkImage(url) {
  const started = performance.now();
  const settings = await loadSettings();
  let result;
  try {
    const bytes = await fetchImage(url, settings.maxBytes);
    result = settings.mode === "server" ? await scoreOnServer(bytes, url, settings) : await scoreLocally(bytes);
  } catch (e) {
    result = { status: "error", code: e.code || "failed", error: e.code ? e.message : String(e.message || e) };
  }
  return { ...result, url, mode: settings.mode, elapsed_ms: performance.now() - started };
}
globalThis.checkImage = checkImage;  // for the tests: the same path as the context menu

async function fetchImage(url, maxBytes) {
  let resp;
  try {
    resp = await fetch(url, { credentials: "include", cache: "no-store" });
  } catch (e) {
    throw new CheckError("fetch-failed", `the image could not be fetched (network error or blocked): ${url}`);
  }
  if (!resp.ok) {
    throw new CheckError("fetch-failed", `the image could not be fetched: HTTP ${resp.status} ${resp.statusText}`.trim());
  }
  const declared = Number(resp.headers.get("content-length") || 0);
  if (declared > maxBytes) throw tooLarge(declared, maxBytes);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  if (bytes.length > maxBytes) throw tooLarge(bytes.length, maxBytes);
  if (bytes.length === 0) throw new CheckError("empty", "the image is empty (0 bytes)");
  if (!sniffFormat(bytes)) {
    const type = resp.headers.get("content-type") || "unknown type";
    throw new CheckError("not-image", `not an image (the server sent ${type.split(";")[0]})`);
  }
  return bytes;
}

function tooLarge(n, max) {
  const mb = (v) => (v / 1048576).toFixed(1);
  return new CheckError("too-large", `the image is too large: ${mb(n)} MB, the limit is ${mb(max)} MB`);
}

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

async function scoreOnServer(bytes, url, settings) {
  const base = settings.serverUrl.replace(/\/+$/, "");
  if (!base) throw new CheckError("server-not-configured", "server mode: no server URL set (open the options page)");
  const name = (new URL(url).pathname.split("/").pop() || "image").slice(0, 200);
  const form = new FormData();
  form.append("file", new Blob([bytes]), name);
  let resp;
  try {
    resp = await fetch(`${base}/v1/score`, {
      method: "POST", body: form, credentials: "omit",
      headers: { Authorization: `Bearer ${settings.apiKey}` },
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
  };
}
