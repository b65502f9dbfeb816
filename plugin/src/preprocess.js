// The scanner's preprocessing (dfscan/workers/decode.py), reproduced step for step so that the
// browser feeds the model what `dfscan scan` feeds it:
//   1. decode with EXIF orientation applied, no colour management, alpha dropped (not composited);
//   2. full-resolution decode for every format: the scanner no longer uses Pillow's JPEG draft
//      mode for the model's input (so that Pillow and DALI agree), and neither does this;
//   3. Pillow's Image.resize(BILINEAR): two separable passes (horizontal then vertical), a triangle
//      filter widened by the scale when shrinking (antialiased), 22-bit fixed-point coefficients,
//      and rounding to 8 bits between and after the passes (Pillow's Resample.c);
//   4. (x / 255 - mean) / std per channel, in float32, as x * a + b.

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;

/** Sniff the container from the first bytes; null when it is none of the formats the scanner opens. */
export function sniffFormat(bytes) {
  const b = bytes;
  const at = (i, ...v) => v.every((x, j) => b[i + j] === x);
  if (b.length < 12) return null;
  if (at(0, 0xff, 0xd8, 0xff)) return "JPEG";
  if (at(0, 0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return "PNG";
  if (at(0, 0x47, 0x49, 0x46, 0x38)) return "GIF";
  if (at(0, 0x52, 0x49, 0x46, 0x46) && at(8, 0x57, 0x45, 0x42, 0x50)) return "WEBP";
  if (at(0, 0x42, 0x4d)) return "BMP";
  if (at(0, 0x49, 0x49, 0x2a, 0x00) || at(0, 0x4d, 0x4d, 0x00, 0x2a)) return "TIFF";
  return null;
}

/** EXIF orientation (1..8) of a JPEG, 1 when absent or unreadable. */
export function jpegOrientation(bytes) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let p = 2;
  while (p + 4 <= dv.byteLength) {
    if (dv.getUint8(p) !== 0xff) return 1;
    const marker = dv.getUint8(p + 1);
    if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7)) { p += 2; continue; }
    if (marker === 0xda || marker === 0xd9) return 1;  // image data starts: no EXIF before it
    const len = dv.getUint16(p + 2);
    if (marker === 0xe1 && len >= 16 && dv.getUint32(p + 4) === 0x45786966) {  // "Exif"
      const t = p + 10;  // TIFF header
      const le = dv.getUint16(t) === 0x4949;
      const u16 = (o) => dv.getUint16(t + o, le);
      const u32 = (o) => dv.getUint32(t + o, le);
      const ifd = u32(4);
      if (t + ifd + 2 > dv.byteLength) return 1;
      const n = u16(ifd);
      for (let i = 0; i < n; i++) {
        const e = ifd + 2 + i * 12;
        if (t + e + 12 > dv.byteLength) return 1;
        if (u16(e) === 0x0112) { const v = u16(e + 8); return v >= 1 && v <= 8 ? v : 1; }
      }
      return 1;
    }
    p += 2 + len;
  }
  return 1;
}

// Resample.c: precompute_coeffs with the bilinear (triangle) filter, support 1.
function coeffs(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const kk = new Float64Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    const k = xx * ksize;
    for (let x = 0; x < xmax; x++) {
      let t = Math.abs((x + xmin - center + 0.5) * ss);
      const w = t < 1.0 ? 1.0 - t : 0.0;
      kk[k + x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) if (ww !== 0.0) kk[k + x] /= ww;
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  // normalize_coeffs_8bpc: to fixed point, rounded half away from zero.
  const ik = new Float64Array(kk.length);
  for (let i = 0; i < kk.length; i++) {
    ik[i] = kk[i] < 0 ? Math.trunc(-0.5 + kk[i] * ONE) : Math.trunc(0.5 + kk[i] * ONE);
  }
  return { ksize, kk: ik, bounds };
}

function clip8(v) {
  if (v >= ONE * 256) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / ONE);
}

/** Pillow's Image.resize((tw, th), BILINEAR) of an RGB image (3 bytes per pixel). */
export function resizeBilinear(rgb, w, h, tw, th) {
  if (w === tw && h === th) return rgb;
  const horiz = coeffs(w, tw);
  const vert = coeffs(h, th);
  let src = rgb, sw = w, sh = h;
  const half = ONE / 2;
  let yFirst = 0;
  if (tw !== w) {
    // Only the source rows the vertical pass reads are resampled horizontally.
    yFirst = vert.bounds[0];
    const yLast = vert.bounds[th * 2 - 2] + vert.bounds[th * 2 - 1];
    const rows = yLast - yFirst, first = yFirst;
    const tmp = new Uint8Array(tw * rows * 3);
    for (let y = 0; y < rows; y++) {
      const row = (y + first) * sw * 3;
      for (let xx = 0; xx < tw; xx++) {
        const xmin = horiz.bounds[xx * 2], xmax = horiz.bounds[xx * 2 + 1], k = xx * horiz.ksize;
        let s0 = half, s1 = half, s2 = half;
        for (let x = 0; x < xmax; x++) {
          const c = horiz.kk[k + x], i = row + (x + xmin) * 3;
          s0 += src[i] * c; s1 += src[i + 1] * c; s2 += src[i + 2] * c;
        }
        const o = (y * tw + xx) * 3;
        tmp[o] = clip8(s0); tmp[o + 1] = clip8(s1); tmp[o + 2] = clip8(s2);
      }
    }
    src = tmp; sw = tw; sh = rows;
    if (th === h) return tmp;
  }
  const out = new Uint8Array(sw * th * 3);
  for (let yy = 0; yy < th; yy++) {
    const ymin = vert.bounds[yy * 2] - yFirst, ymax = vert.bounds[yy * 2 + 1], k = yy * vert.ksize;
    for (let xx = 0; xx < sw; xx++) {
      let s0 = half, s1 = half, s2 = half;
      for (let y = 0; y < ymax; y++) {
        const c = vert.kk[k + y], i = ((y + ymin) * sw + xx) * 3;
        s0 += src[i] * c; s1 += src[i + 1] * c; s2 += src[i + 2] * c;
      }
      const o = (yy * sw + xx) * 3;
      out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2);
    }
  }
  return out;
}

/** RGB bytes (H x W x 3) to a CHW float32 tensor normalised like Preprocess.scale_and_shift. */
export function normalise(rgb, w, h, mean, std) {
  const f = Math.fround;
  const a = std.map((s) => f(1.0 / f(255.0 * f(s))));
  const b = mean.map((m, c) => f(-f(m) / f(std[c])));
  const plane = w * h;
  const out = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) out[c * plane + i] = f(f(rgb[i * 3 + c] * a[c]) + b[c]);
  }
  return out;
}

/**
 * Decoded RGBA pixels (orientation applied) to the model's input tensor.
 * `format` and `orientation` are kept for callers; every format is decoded at full resolution.
 */
export function toTensor(rgba, width, height, format, orientation, info) {
  const [th, tw] = info.input_size;
  let rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
  }
  const resized = resizeBilinear(rgb, width, height, tw, th);
  return normalise(resized, tw, th, info.mean, info.std);
}

/** Softmax with temperature over the logits of one image; p_fake, label and confidence as the scanner's Verdict. */
export function verdict(logits, info) {
  const z = Array.from(logits, (v) => v / info.temperature);
  const m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m));
  const sum = e.reduce((x, y) => x + y, 0);
  const pFake = e[info.classes.indexOf("fake")] / sum;
  const label = pFake >= info.threshold ? "fake" : "real";
  return { label, p_fake: pFake, confidence: label === "fake" ? pFake : 1 - pFake };
}
