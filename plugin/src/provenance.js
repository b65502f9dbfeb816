// What the server read of an image's own origin (its `provenance` object, the scan_provenance view's
// fields), as one short line: "C2PA: valid (signer) · declared synthetic (trainedAlgorithmicMedia) ·
// watermark SDXL". Empty when the image says nothing. Shown with textContent: the strings come from the file.
export function provenanceLine(p) {
  if (!p || typeof p !== "object") return "";
  const parts = [];
  if (p.c2pa && p.c2pa !== "none") {
    const state = p.c2pa_state || (p.c2pa === "remote" ? "remote, not fetched" : p.c2pa);
    const codes = p.c2pa_codes ? `: ${p.c2pa_codes}` : "";
    parts.push(`C2PA: ${state}${p.signer ? ` (${p.signer})` : ""}${codes}`);
  }
  if (p.synthetic_declared) parts.push(`declared synthetic${p.source_type ? ` (${p.source_type})` : ""}`);
  else if (p.source_type) parts.push(`source ${p.source_type}`);
  if (p.generator) parts.push(`generator ${p.generator}`);
  if (p.watermark) parts.push(`watermark ${p.watermark}`);
  return parts.join(" · ");
}
