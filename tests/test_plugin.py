"""The browser extension (plugin/) in a real headless Chromium: verdicts equal to `dfscan scan`'s.

The extension is built by `dfscan plugin build` with the tiny real model, images are served from a
local HTTP server, and each check goes through the extension's own code path (the service worker's
``checkImage``, which the context menu calls; the popup page for the error messages).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import urllib.request
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dfscan.cli import main
from dfscan.plugin import ORT_FILES, PLUGIN_DIR
from tests._browser import ORT_DIST, check, chromium_with_extension, http_server, set_options
from tests._browser import build_extension as build
from tests._browser import playwright_driver  # noqa: F401 - fixture
from tests._images import pattern
from tests._models import linear_probe_onnx_model, tiny_onnx_model  # noqa: F401 - fixtures
from tests._provenance_files import HOSTILE, SIGNER, write_provenance_files

needs_npm = pytest.mark.skipif(not (ORT_DIST / ORT_FILES[0]).is_file(),
                               reason="onnxruntime-web is not installed: run `npm ci` in plugin/ (make plugin)")


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def write_test_images(folder: Path) -> list[str]:
    """A few dozen varied files: sizes that upscale and that take JPEG draft mode (1/2, 1/4, 1/8),
    EXIF rotation, progressive and 4:4:4 JPEG, grey, palette and alpha PNG, GIF, WebP, BMP."""
    folder.mkdir(parents=True, exist_ok=True)

    def save(name: str, im: Image.Image, **kw: object) -> None:
        im.save(folder / name, **kw)

    for i in range(8):
        save(f"plain_{i}.jpg", pattern(100 + i), quality=90)
    for i, size in enumerate([(100, 80), (300, 200), (480, 640), (640, 480), (1000, 750), (1800, 1200),
                              (2400, 1900), (223, 500)]):
        save(f"size_{i}_{size[0]}x{size[1]}.jpg", pattern(200 + i, size), quality=88)
    save("progressive.jpg", pattern(300, (800, 600)), quality=85, progressive=True)
    save("subsampling444.jpg", pattern(301, (500, 400)), quality=95, subsampling=0)
    save("low_quality.jpg", pattern(302, (400, 400)), quality=40)
    save("grey.jpg", pattern(303, (300, 300)).convert("L"), quality=90)
    for name, orientation, size in [("rot6.jpg", 6, (320, 200)), ("rot8_large.jpg", 8, (1200, 700)),
                                    ("rot3.jpg", 3, (400, 300))]:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(name, pattern(310 + orientation, size), exif=exif.tobytes(), quality=90)
    save("rgb.png", pattern(400))
    save("wide.png", pattern(401, (500, 300)))
    save("grey.png", pattern(402).convert("L"))
    save("palette.png", pattern(403).convert("P", palette=Image.Palette.ADAPTIVE, colors=64))
    rgba = pattern(404)
    rgba.putalpha(255)
    save("opaque_alpha.png", rgba)
    save("photo.gif", pattern(405).convert("P"))
    save("photo.webp", pattern(406), quality=80)
    save("photo.bmp", pattern(407, (300, 250)))
    save("lossless.webp", pattern(408), lossless=True)
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def extension(linear_probe_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The extension with the linear probe: a model whose p_fake moves with every pixel."""
    return build(linear_probe_onnx_model, tmp_path_factory.mktemp("ext") / "dfscan-extension")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("site")
    names = write_test_images(root / "img")
    (root / "page.html").write_text("<html><body>" + "".join(f'<img src="img/{n}">' for n in names) + "</body></html>")
    (root / "notes.txt").write_text("this is text, not an image\n" * 10)
    (root / "page.jpg").write_bytes(b"<html>an HTML error page served under an image name</html>" * 5)
    write_provenance_files(root / "prov")  # files that say where they come from (server mode reads it)
    with http_server(root) as base:
        yield root, base, names


def scan_reference(model: Path, folder: Path, db_path: Path) -> dict:
    """What `dfscan scan` stores for the files of ``folder``: {file name: (status, label, p_fake)}."""
    res = run("scan", str(folder), "--model", str(model), "--db", f"sqlite:///{db_path}",
              "--runtime", "onnxruntime", "--decoder", "pillow", "--no-progress")
    assert res.exit_code == 0, res.output
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT path, status, label, p_fake FROM scan_results").fetchall()
    return {Path(path).name: (status, label, p_fake) for path, status, label, p_fake in rows}


@pytest.fixture(scope="module")
def scanner_verdicts(site, linear_probe_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: F811
    reference = scan_reference(linear_probe_onnx_model, site[0] / "img", tmp_path_factory.mktemp("scan") / "scan.db")
    p = sorted(v[2] for v in reference.values())
    assert p[-1] - p[0] > 0.5, f"the probe's p_fake should spread over the images, got {p[0]:.3f}..{p[-1]:.3f}"
    return reference


@pytest.fixture(scope="module")
def browser(playwright_driver, extension: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    with chromium_with_extension(playwright_driver, extension, tmp_path_factory.mktemp("profile")) as (context, worker):
        yield context, worker


def compare(results: dict[str, dict], reference: dict) -> tuple[float, float]:
    """(max |delta p_fake|, share of equal labels) over the files; every file must be scored in both."""
    assert set(results) == set(reference)
    deltas, same = [], 0
    for name, r in results.items():
        status, label, p_fake = reference[name]
        assert status == "ok", name
        assert r["status"] == "ok", (name, r)
        deltas.append(abs(r["p_fake"] - p_fake))
        same += r["label"] == label
    return max(deltas), same / len(results)


@needs_npm
def test_build_writes_extension_and_zip(extension: Path, linear_probe_onnx_model: Path) -> None:  # noqa: F811
    manifest = json.loads((extension / "manifest.json").read_text())
    assert manifest["manifest_version"] == 3
    info = json.loads((extension / "model" / "model.json").read_text())
    sidecar = json.loads(linear_probe_onnx_model.with_name("probe.model_info.json").read_text())
    for key in ("input_size", "mean", "std", "threshold", "temperature", "classes"):
        assert info[key] == sidecar[key], key
    assert (extension / "model" / "model.onnx").read_bytes() == linear_probe_onnx_model.read_bytes()
    assert sorted(p.name for p in (extension / "ort").iterdir()) == sorted(ORT_FILES)
    with zipfile.ZipFile(extension.with_name(extension.name + ".zip")) as zf:
        assert "manifest.json" in zf.namelist() and "ort/ort-wasm-simd-threaded.wasm" in zf.namelist()


def test_build_without_npm_packages_says_what_to_do(tiny_onnx_model: Path, tmp_path: Path) -> None:  # noqa: F811
    fake_plugin = tmp_path / "plugin"
    (fake_plugin / "src").mkdir(parents=True)
    (fake_plugin / "src" / "manifest.json").write_text("{}")
    res = CliRunner().invoke(main, ["plugin", "build", "--model", str(tiny_onnx_model), "--out", str(tmp_path / "x"),
                                    "--plugin-dir", str(fake_plugin)])
    assert res.exit_code == 1 and "npm ci" in res.output


def test_preprocessing_is_pillows_resize_bit_for_bit(tmp_path: Path) -> None:
    """preprocess.js's resize against Pillow's Image.resize(BILINEAR), in Node: every byte equal."""
    node = subprocess.run(["node", "--version"], capture_output=True, text=True) if _which("node") else None
    if node is None or node.returncode != 0:
        pytest.skip("node is not installed")
    rng = np.random.default_rng(0)
    cases = [(256, 256, 224, 224), (640, 480, 224, 224), (100, 80, 224, 224), (300, 224, 224, 224),
             (224, 500, 224, 224), (1000, 37, 224, 224), (225, 223, 224, 224), (224, 224, 160, 112)]
    for i, (w, h, tw, th) in enumerate(cases):
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        (tmp_path / f"in{i}.raw").write_bytes(a.tobytes())
        want = np.asarray(Image.fromarray(a).resize((tw, th), Image.Resampling.BILINEAR))
        (tmp_path / f"want{i}.raw").write_bytes(want.tobytes())
    script = tmp_path / "check.mjs"
    script.write_text(f"""
import fs from "fs";
import {{ resizeBilinear }} from {json.dumps((PLUGIN_DIR / "src" / "preprocess.js").as_uri())};
const cases = {json.dumps(cases)};
const out = cases.map(([w, h, tw, th], i) => {{
  const got = resizeBilinear(new Uint8Array(fs.readFileSync(`in${{i}}.raw`)), w, h, tw, th);
  const want = new Uint8Array(fs.readFileSync(`want${{i}}.raw`));
  let differ = got.length === want.length ? 0 : -1;
  for (let j = 0; j < want.length && differ >= 0; j++) if (got[j] !== want[j]) differ++;
  return differ;
}});
console.log(JSON.stringify(out));
""")
    res = subprocess.run(["node", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [0] * len(cases)


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


@pytest.mark.slow  # starts Chromium (and a server): ~20-30 s
def test_local_mode_matches_the_scanner(browser, site, scanner_verdicts) -> None:
    _, worker = browser
    _, base, names = site
    set_options(worker, mode="local")
    first = check(worker, f"{base}/img/{names[0]}")  # loads the model
    assert first["status"] == "ok", first
    results = {name: check(worker, f"{base}/img/{name}") for name in names}
    max_delta, agreement = compare(results, scanner_verdicts)
    times = sorted(r["elapsed_ms"] for r in results.values())
    worst = sorted(results, key=lambda n: -abs(results[n]["p_fake"] - scanner_verdicts[n][2]))[:4]
    print("\nlargest differences: " + ", ".join(f"{n} {abs(results[n]['p_fake'] - scanner_verdicts[n][2]):.4f}"
                                            for n in worst))
    print(f"\nlocal mode: {len(names)} images, max |dp_fake| {max_delta:.5f}, label agreement {agreement:.1%}, "
          f"first check (model load) {first['elapsed_ms']:.0f} ms, median check {times[len(times) // 2]:.0f} ms")
    assert max_delta <= 0.02
    assert agreement >= 0.99


def test_errors_are_messages_in_the_popup(browser, site) -> None:
    context, worker = browser
    _, base, _ = site
    set_options(worker, mode="local")
    ext_id = worker.url.split("/")[2]
    cases = {
        f"{base}/img/missing.jpg": ("fetch-failed", "HTTP 404"),
        f"{base}/notes.txt": ("not-image", "not an image"),
        f"{base}/page.jpg": ("not-image", "not an image"),
        "http://127.0.0.1:9/blocked.jpg": ("fetch-failed", "could not be fetched"),
    }
    page = context.new_page()
    try:
        for url, (code, text) in cases.items():
            r = check(worker, url)
            assert r["status"] == "error" and r["code"] == code and text in r["error"], r
            page.goto(f"chrome-extension://{ext_id}/popup.html?url={url}")
            page.wait_for_selector("body[data-state=error]", timeout=30_000)
            assert text in page.inner_text("#error")
            assert page.is_hidden("#result")
    finally:
        page.close()


def test_too_large_is_refused_before_decoding(browser, site) -> None:
    _, worker = browser
    _, base, names = site
    set_options(worker, mode="local", maxBytes=1000)
    try:
        r = check(worker, f"{base}/img/{names[0]}")
    finally:
        set_options(worker, maxBytes=32 * 1024 * 1024)
    assert r["status"] == "error" and r["code"] == "too-large" and "too large" in r["error"]


def test_popup_shows_the_verdict(browser, site, scanner_verdicts) -> None:
    context, worker = browser
    _, base, names = site
    set_options(worker, mode="local")
    ext_id = worker.url.split("/")[2]
    page = context.new_page()
    try:
        page.goto(f"chrome-extension://{ext_id}/popup.html?url={base}/img/{names[1]}")
        page.wait_for_selector("body[data-state=done]", timeout=60_000)
        _, label, p_fake = scanner_verdicts[names[1]]
        assert page.inner_text("#verdict") == label.upper()
        assert abs(float(page.inner_text("#p_fake")) - p_fake) <= 0.02
    finally:
        page.close()


def test_server_mode_unreachable_server_is_a_message(browser, site) -> None:
    _, worker = browser
    _, base, names = site
    set_options(worker, mode="server", serverUrl="http://127.0.0.1:9", apiKey="dfs_nothing")
    try:
        r = check(worker, f"{base}/img/{names[0]}")
    finally:
        set_options(worker, mode="local")
    assert r["status"] == "error" and r["code"] == "server-unreachable" and "unreachable" in r["error"], r


@pytest.fixture(scope="module")
def dfscan_serve(linear_probe_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """A real `dfscan serve` with the same model, and a fresh API key: (url, token)."""
    if "serve" not in main.commands:
        pytest.skip("dfscan serve is not in this build")
    tmp = tmp_path_factory.mktemp("serve")
    db_url = f"sqlite:///{tmp / 'serve.db'}"
    created = run("api-key", "create", "--name", "extension-tests", "--db", db_url, "--json")
    assert created.exit_code == 0, created.output
    token = json.loads(created.output)["token"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dfscan.cli", "serve", "--model", str(linear_probe_onnx_model), "--db", db_url,
         "--host", "127.0.0.1", "--port", str(port), "--runtime", "onnxruntime", "--decoder", "pillow"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "DFSCAN_THREADS": "1"},
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "dfscan serve did not become ready: " + log.read_text()[-2000:]
            time.sleep(0.3)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow  # starts Chromium (and a server): ~20-30 s
def test_server_mode_matches_the_scanner(browser, site, scanner_verdicts, dfscan_serve) -> None:
    _, worker = browser
    _, base, names = site
    url, token = dfscan_serve
    set_options(worker, mode="server", serverUrl=url, apiKey=token)
    try:
        results = {name: check(worker, f"{base}/img/{name}") for name in names}
        not_image = check(worker, f"{base}/notes.txt")
        set_options(worker, apiKey="dfs_wrong")
        refused = check(worker, f"{base}/img/{names[0]}")
    finally:
        set_options(worker, mode="local")
    assert all(r["mode"] == "server" for r in results.values())
    max_delta, agreement = compare(results, scanner_verdicts)
    print(f"\nserver mode: {len(names)} images, max |dp_fake| {max_delta:.6f}, label agreement {agreement:.1%}")
    assert max_delta <= 1e-4  # the server decodes with Pillow like the scanner: the same numbers
    assert agreement == 1.0
    assert refused["status"] == "error" and refused["code"] == "server-refused-key", refused
    assert not_image["status"] == "error" and not_image["code"] == "not-image", not_image


@pytest.mark.slow  # starts Chromium (and a server): ~20-30 s
def test_server_mode_shows_what_the_file_says_about_its_origin(browser, site, dfscan_serve) -> None:
    """The server's provenance of each file comes back with its verdict; the popup shows it as text."""
    context, worker = browser
    _, base, _ = site
    url, token = dfscan_serve
    set_options(worker, mode="server", serverUrl=url, apiKey=token)
    ext_id = worker.url.split("/")[2]
    page = context.new_page()
    try:
        got = {name: check(worker, f"{base}/prov/{name}") for name in ("tampered.jpg", "sd.png", "plain.jpg")}
        lines = {}
        for name in ("tampered.jpg", "xmp_ai.jpg", "watermarked.png", "plain.jpg"):
            page.goto(f"chrome-extension://{ext_id}/popup.html?url={base}/prov/{name}")
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            lines[name] = (page.inner_text("#provenance") if page.is_visible("#provenance") else "",
                           page.locator("#provenance img, #provenance script").count())
    finally:
        page.close()
        set_options(worker, mode="local")
    assert all(r["status"] == "ok" for r in got.values()), got
    tampered = got["tampered.jpg"]["provenance"]
    assert (tampered["c2pa"], tampered["c2pa_state"], tampered["signer"]) == ("embedded", "invalid", SIGNER)
    assert got["sd.png"]["provenance"]["synthetic_declared"] is True
    assert got["plain.jpg"]["provenance"]["synthetic_declared"] is False
    line, _ = lines["tampered.jpg"]
    print(f"\npopup: {line}")
    assert line.startswith(f"C2PA: invalid ({SIGNER})") and "assertion.dataHash.mismatch" in line
    assert "declared synthetic (trainedAlgorithmicMedia)" in line
    text, markup = lines["xmp_ai.jpg"]
    assert HOSTILE in text and markup == 0  # the file's markup is text in the popup, never elements
    assert lines["watermarked.png"][0] == "declared synthetic · watermark SDXL"
    assert lines["plain.jpg"] == ("", 0)


@pytest.mark.slow  # starts Chromium (and a server): ~20-30 s
def test_the_tiny_detector_runs_in_the_browser(playwright_driver, tiny_onnx_model: Path, site,  # noqa: F811
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    """The real detector graph (ResNeXt-style backbone, BiLSTM) in onnxruntime-web: the scanner's numbers."""
    root, base, names = site
    picked = names[::4]
    folder = tmp_path_factory.mktemp("tiny_imgs")
    for name in picked:
        (folder / name).write_bytes((root / "img" / name).read_bytes())
    reference = scan_reference(tiny_onnx_model, folder, tmp_path_factory.mktemp("tiny_scan") / "scan.db")
    ext = build(tiny_onnx_model, tmp_path_factory.mktemp("tiny_ext") / "ext")
    with chromium_with_extension(playwright_driver, ext, tmp_path_factory.mktemp("tiny_profile")) as (_, worker):
        results = {name: check(worker, f"{base}/img/{name}") for name in picked}
    max_delta, agreement = compare(results, reference)
    assert max_delta <= 1e-4 and agreement == 1.0


@pytest.mark.slow  # starts Chromium (and a server): ~20-30 s
def test_a_face_crop_model_says_it_needs_the_server(playwright_driver, linear_probe_onnx_model: Path, site,  # noqa: F811
                                                    tmp_path: Path) -> None:
    """A model trained on face crops: local mode can't detect faces, and says so instead of a wrong verdict."""
    _, base, names = site
    model = tmp_path / "model.onnx"
    model.write_bytes(linear_probe_onnx_model.read_bytes())
    sidecar = json.loads(linear_probe_onnx_model.with_name("probe.model_info.json").read_text())
    (tmp_path / "model_info.json").write_text(json.dumps({**sidecar, "file": "model.onnx", "input": "face-crop"}))
    ext = build(model, tmp_path / "ext")
    assert json.loads((ext / "model" / "model.json").read_text())["input"] == "face-crop"
    with chromium_with_extension(playwright_driver, ext, tmp_path / "profile") as (_, worker):
        r = check(worker, f"{base}/img/{names[0]}")
    assert r["status"] == "error" and r["code"] == "needs-server" and "server mode" in r["error"], r
