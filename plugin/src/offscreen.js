// Local mode: the model runs here, in an offscreen document, because onnxruntime-web's WASM
// backend can't start inside an MV3 service worker (no dynamic import there). The service worker
// sends the image bytes (it fetched them: content scripts can't read cross-origin pixels).
import * as ort from "./ort/ort.wasm.bundle.min.mjs";
import { sniffFormat, jpegOrientation, toTensor, verdict } from "./preprocess.js";

// Only the binary is fetched; the Emscripten glue is inlined in the bundle (a prefix here would make
// onnxruntime-web import ort-wasm-simd-threaded.mjs from it, a file the build does not ship).
ort.env.wasm.wasmPaths = { wasm: chrome.runtime.getURL("ort/ort-wasm-simd-threaded.wasm") };
ort.env.wasm.numThreads = 1;  // no cross-origin isolation here, so no SharedArrayBuffer threads
ort.env.wasm.proxy = false;

let loading = null;

class CheckError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

async function model() {
  if (!loading) {
    loading = (async () => {
      let info;
      try {
        info = await (await fetch(chrome.runtime.getURL("model/model.json"))).json();
      } catch (e) {
        throw new CheckError("model-load-failed", `the model could not be loaded: model/model.json is missing or invalid (${e.message}); rebuild the extension with dfscan plugin build`);
      }
      if (info.input && info.input !== "whole-image") {
        throw new CheckError("needs-server", `this model scores face crops (${info.input}); face detection runs only on the dfscan server: choose server mode in the options page`);
      }
      try {
        const bytes = await (await fetch(chrome.runtime.getURL(`model/${info.file}`))).arrayBuffer();
        const session = await ort.InferenceSession.create(new Uint8Array(bytes), { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
        return { info, session };
      } catch (e) {
        throw new CheckError("model-load-failed", `the model could not be loaded: ${String(e.message || e).split("\n")[0]}`);
      }
    })();
    loading.catch(() => { loading = null; });  // a later check tries again
  }
  return loading;
}

function fromBase64(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function decode(bytes, info) {
  const format = sniffFormat(bytes);
  if (!format) throw new CheckError("not-image", "not an image file (format not recognised)");
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]), {
      imageOrientation: "from-image", premultiplyAlpha: "none", colorSpaceConversion: "none",
    });
  } catch (e) {
    throw new CheckError("decode-failed", `the image could not be decoded (${format}, damaged or truncated)`);
  }
  const { width, height } = bitmap;
  if (width * height > info.max_pixels) {
    bitmap.close();
    throw new CheckError("too-many-pixels", `too many pixels: ${width}x${height} exceeds the limit of ${info.max_pixels}`);
  }
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const pixels = ctx.getImageData(0, 0, width, height, { colorSpace: "srgb" }).data;
  const orientation = format === "JPEG" ? jpegOrientation(bytes) : 1;
  return { tensor: toTensor(pixels, width, height, format, orientation, info), width, height, format };
}

async function score(bytesB64) {
  const t0 = performance.now();
  const { info, session } = await model();
  const tLoaded = performance.now();
  const bytes = fromBase64(bytesB64);
  const { tensor, width, height, format } = await decode(bytes, info);
  const [h, w] = info.input_size;
  const feeds = { [info.input_name]: new ort.Tensor("float32", tensor, [1, 3, h, w]) };
  const out = await session.run(feeds);
  const logits = out[info.output_name].data;
  const v = verdict(logits, info);
  return {
    status: "ok", ...v, logits: Array.from(logits), width, height, format,
    model_sha256: info.sha256, threshold: info.threshold,
    ms: { load_model: tLoaded - t0, check: performance.now() - tLoaded },
  };
}

chrome.runtime.onMessage.addListener((msg, _sender, reply) => {
  if (msg?.target !== "offscreen") return false;
  if (msg.type === "score") {
    score(msg.bytes).then(reply, (e) => reply({
      status: "error", code: e.code || "inference-failed",
      error: e.code ? e.message : `inference failed: ${String(e.message || e).split("\n")[0]}`,
    }));
    return true;  // answer asynchronously
  }
  if (msg.type === "ping") { reply({ ready: true }); return false; }
  return false;
});
