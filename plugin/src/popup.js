// Shows a check's result: the verdict, p_fake, confidence, the file's provenance (server mode), and the
// face boxes when the answer has any.
// Opened by the context menu (the result arrives in chrome.storage.session) or as popup.html?url=...
// (it asks the service worker to check that image; &page=... gives the tab's address, which decides
// whether the user's cookies go with the image, see policy.js).
import { fetchImage } from "./fetch.js";
import { provenanceLine } from "./provenance.js";
import { loadSettings } from "./settings.js";

const $ = (id) => document.getElementById(id);

function show(r) {
  if (!r) return;
  $("url").textContent = r.url || "";
  $("mode").textContent = r.mode ? `${r.mode} mode` : "";
  $("error").hidden = true;
  $("result").hidden = true;
  if (r.status === "checking") { $("state").textContent = "Checking…"; return; }
  $("state").textContent = "";
  if (r.status !== "ok") {
    $("error").hidden = false;
    $("error").textContent = r.error || "the check failed";
    $("error").dataset.code = r.code || "";
    document.body.dataset.state = "error";
    return;
  }
  $("result").hidden = false;
  $("verdict").textContent = r.label.toUpperCase();
  $("verdict").className = r.label;
  $("p_fake").textContent = r.p_fake.toFixed(4);
  $("confidence").textContent = `${(100 * r.confidence).toFixed(1)} %`;
  $("time").textContent = r.elapsed_ms != null ? `${Math.round(r.elapsed_ms)} ms` : "";
  const origin = provenanceLine(r.provenance);  // server mode: what the file says about its origin
  $("provenance").textContent = origin;
  $("provenance").hidden = !origin;
  drawFigure(r);
  document.body.dataset.state = "done";
}

// The figure's image is fetched as the check fetched it (cookies only where the check sent them,
// the same size limit): an <img> pointed at the URL would carry the cookies of any site.
async function drawFigure(r) {
  let bytes;
  try {
    bytes = await fetchImage(r.url, (await loadSettings()).maxBytes, r.credentials === "include" ? "include" : "omit");
  } catch {
    return;  // the verdict stands without its figure
  }
  const img = new Image();
  const src = URL.createObjectURL(new Blob([bytes]));
  img.onload = () => {
    URL.revokeObjectURL(src);
    const canvas = $("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    ctx.lineWidth = Math.max(2, img.naturalWidth / 150);
    for (const f of r.faces || []) {  // {x, y, w, h, p_fake, label} in original pixels, from the server's face stage
      ctx.strokeStyle = (f.label || r.label) === "fake" ? "#e53935" : "#43a047";
      ctx.strokeRect(f.x, f.y, f.w, f.h);
    }
    $("figure").hidden = false;
  };
  img.src = src;
}

const params = new URLSearchParams(location.search);
if (params.get("url")) {
  document.body.dataset.state = "checking";
  show({ status: "checking", url: params.get("url") });
  chrome.runtime.sendMessage({ type: "check", url: params.get("url"), page: params.get("page") || "" }).then(show, (e) =>
    show({ status: "error", error: `the extension did not answer: ${e.message}` }));
} else {
  chrome.storage.session.get("last").then(({ last }) => show(last));
  chrome.storage.onChanged.addListener((changes, area) => {
    if (area === "session" && changes.last) show(changes.last.newValue);
  });
}
