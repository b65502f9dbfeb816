// Fetching an image's bytes for a check (the service worker) and for the popup's figure: with the
// user's cookies only when the caller says the image is of the tab's site (policy.js), never
// following a redirect with them, and never holding more than the size limit in memory.
import { sniffFormat } from "./preprocess.js";

/** A check's failure with a code the popup and the tests read; its message is for people. */
export class CheckError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

/** The image's bytes, refused with a CheckError when missing, too large or not an image. */
export async function fetchImage(url, maxBytes, credentials) {
  const controller = new AbortController();
  // With cookies, redirects are not followed: the target may be any site. The image is then
  // fetched again without cookies, following them.
  const get = (creds) => fetch(url, {
    credentials: creds, cache: "no-store", signal: controller.signal, redirect: creds === "include" ? "manual" : "follow",
  });
  let resp;
  try {
    resp = await get(credentials);
    if (resp.type === "opaqueredirect") resp = await get("omit");
  } catch (e) {
    throw new CheckError("fetch-failed", `the image could not be fetched (network error or blocked): ${url}`);
  }
  if (!resp.ok) {
    controller.abort();
    throw new CheckError("fetch-failed", `the image could not be fetched: HTTP ${resp.status} ${resp.statusText}`.trim());
  }
  const declared = Number(resp.headers.get("content-length") || 0);
  if (declared > maxBytes) {
    controller.abort();
    throw tooLarge(`${mb(declared)} MB`, maxBytes);
  }
  const bytes = await readCapped(resp, maxBytes, controller);
  if (bytes.length === 0) throw new CheckError("empty", "the image is empty (0 bytes)");
  if (!sniffFormat(bytes)) {
    const type = resp.headers.get("content-type") || "unknown type";
    throw new CheckError("not-image", `not an image (the server sent ${type.split(";")[0]})`);
  }
  return bytes;
}

/**
 * The body, read chunk by chunk and abandoned (the connection closed) as soon as it passes
 * ``maxBytes``: Content-Length may be missing (chunked), or not the size of the body (with
 * Transfer-Encoding or Content-Encoding), so only the bytes counted here are trusted.
 */
async function readCapped(resp, maxBytes, controller) {
  if (!resp.body) return new Uint8Array(0);
  const reader = resp.body.getReader();
  const chunks = [];
  let total = 0;
  for (;;) {
    let part;
    try {
      part = await reader.read();
    } catch (e) {
      throw new CheckError("fetch-failed", `the image could not be read to the end: ${e.message || e}`);
    }
    if (part.done) break;
    total += part.value.length;
    if (total > maxBytes) {
      controller.abort();
      throw tooLarge(`over ${mb(maxBytes)} MB`, maxBytes);
    }
    chunks.push(part.value);
  }
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  return bytes;
}

const mb = (v) => (v / 1048576).toFixed(1);

function tooLarge(size, max) {
  return new CheckError("too-large", `the image is too large: ${size}, the limit is ${mb(max)} MB`);
}
