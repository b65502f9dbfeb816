"""`dfscan report`: a real scan's page, checked as HTML and rendered by headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps
from sqlalchemy import text

from dfscan import db
from dfscan.cli import main
from tests._images import pattern, write_bad_files, write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

TOP = 6
THUMB = 160
# Mean absolute pixel difference (0..255) between a thumbnail and Pillow's own
# rendering of the file: re-encoding and resampling stay well under this, while
# two different test images differ by more than 30.
SAME = 10.0
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium binary (apt-get install -y chromium; .ci/run installs it)"
)
# Flags that work in a container without a display, a GPU or a network.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--force-device-scale-factor=1", "--hide-scrollbars",
)  # fmt: skip


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


class Page(HTMLParser):
    """Tags with their attributes, in document order, and the text of <title> elements inside SVGs."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.svg_titles: list[str] = []
        self._in_title = False
        self.feed(source)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_title = tag == "title" and any(t == "rect" for t, _ in self.tags[-2:-1])

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.svg_titles.append(data)

    def all(self, tag: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory, tiny_onnx_model: Path):
    """A real scan: photos of several sizes, an EXIF-rotated one, a PNG, and four bad files."""
    base = tmp_path_factory.mktemp("report")
    root = base / "archive"
    write_jpegs(root / "photos", 8)
    write_jpegs(root / "large", 3, size=(900, 600), start=20)
    exif = Image.Exif()
    exif[0x0112] = 6
    pattern(40, (320, 200)).save(root / "photos" / "rotated.jpg", exif=exif.tobytes(), quality=90)
    pattern(41).save(root / "photos" / "drawing.png")
    write_bad_files(root / "bad")
    # The tiny model's scores sit close together: a first scan finds them, and
    # the reported scan cuts at their median so that both labels show.
    url = f"sqlite:///{base / 'dfscan.db'}"
    assert cli("scan", str(root), "--model", str(tiny_onnx_model), "--db", url, "--batch-size", "4").exit_code == 0
    engine = db.make_engine(url)
    with engine.connect() as conn:
        scores = sorted(conn.execute(text("SELECT p_fake FROM results WHERE status = 'ok'")).scalars())
    engine.dispose()
    cut = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    result = cli("scan", str(root), "--model", str(tiny_onnx_model), "--db", url, "--batch-size", "4",
                 "--threshold", repr(cut), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["real"] > 0 and summary["fake"] > 0
    return url, summary, base


@pytest.fixture(scope="module")
def report_page(scanned) -> Path:
    url, summary, base = scanned
    out = base / "report.html"
    result = cli("report", str(summary["scan_id"]), "--db", url, "--out", str(out), "--top", str(TOP))
    assert result.exit_code == 0, result.output
    assert f"scan {summary['scan_id']}" in result.output
    return out


def _top_paths(url: str, scan_id: int, n: int) -> list[str]:
    engine = db.make_engine(url)
    with engine.connect() as conn:
        paths = conn.execute(text(
            "SELECT path FROM scan_results WHERE scan_id = :s AND status = 'ok' ORDER BY p_fake DESC, path LIMIT :n"
        ), {"s": scan_id, "n": n}).scalars().all()
    engine.dispose()
    return paths


def _expected_thumbnail(path: str) -> Image.Image:
    """What the file looks like, shown upright and shrunk: computed here with plain Pillow."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((THUMB, THUMB))
        return im


def _decode_data_uri(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert im.format == "JPEG"
    return im.convert("RGB")


def _diff(a: Image.Image, b: Image.Image) -> float:
    b = b.resize(a.size) if b.size != a.size else b
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


def test_report_is_self_contained_and_shows_the_scan(scanned, report_page: Path):
    url, summary, _ = scanned
    source = report_page.read_text(encoding="utf-8")
    page = Page(source)
    # Nothing is fetched: every reference is inline data.
    refs = [v for _, attrs in page.tags for k, v in attrs.items() if k in ("src", "href", "srcset", "poster", "data")]
    assert refs and all(v.startswith("data:") for v in refs), refs
    assert not page.all("link") and not page.all("script") and not page.all("iframe")
    assert not re.search(r"https?://|url\(", source)

    # The most suspicious images, in order, each with a thumbnail of its own file.
    figures = [a for t, a in page.tags if t == "figure"]
    assert [f["data-path"] for f in figures] == _top_paths(url, summary["scan_id"], TOP)
    images = page.all("img")
    assert len(images) == TOP
    for figure, img in zip(figures, images):
        thumb = _decode_data_uri(img["src"])
        want = _expected_thumbnail(figure["data-path"])
        assert thumb.size == want.size and max(thumb.size) <= THUMB
        assert _diff(thumb, want) < SAME, figure["data-path"]
        others = [f["data-path"] for f in figures if f is not figure]
        assert min(_diff(thumb, _expected_thumbnail(p)) for p in others) > 3 * SAME

    # Histogram: its bars count every scored image once.
    bars = re.findall(r"^[\d.]+–[\d.]+: (\d+) (real|fake)$", "\n".join(page.svg_titles), re.MULTILINE)
    for label in ("real", "fake"):
        assert sum(int(n) for n, lab in bars if lab == label) == summary[label], label
    assert sum(int(n) for n, _ in bars) == summary["ok"] > 0
    svgs = {a.get("id") for a in page.all("svg")}
    assert {"histogram", "errors"} <= svgs

    # Errors by reason, and the summary counts.
    assert summary["errors_by_reason"] == {"empty": 1, "truncated": 1, "not-image": 1, "too-many-pixels": 1}
    for reason, n in summary["errors_by_reason"].items():
        assert re.search(rf"<code>{re.escape(reason)}</code></td><td class=\"num\">{n}</td>", source), reason
    for key in ("total", "real", "fake", "errors"):
        assert f'<div class="v">{summary[key]}</div><div class="k">{"images" if key == "total" else key}</div>' in source

    # The audit record is on the page.
    for key in ("user", "host", "command", "model_sha256", "runtime", "runtime_version", "decoder",
                "decoder_version", "threshold"):
        assert f"<th>{key}</th>" in source, key
    assert summary["model_sha256"] in source


def test_thumbnail_of_every_suspect_matches_its_file_even_rotated_and_large(scanned, tmp_path):
    url, summary, base = scanned
    out = tmp_path / "all.html"
    assert cli("report", str(summary["scan_id"]), "--db", url, "--out", str(out), "--top", "100").exit_code == 0
    page = Page(out.read_text(encoding="utf-8"))
    figures = page.all("figure")
    assert len(figures) == summary["ok"] == len(page.all("img"))
    shown = {f["data-path"]: _decode_data_uri(i["src"]) for f, i in zip(figures, page.all("img"))}
    rotated = shown[str(base / "archive" / "photos" / "rotated.jpg")]
    assert rotated.size == (100, 160)  # stored 320x200 landscape, EXIF says portrait
    large = [im for p, im in shown.items() if "/large/" in p]
    assert len(large) == 3 and all(im.size == (160, 107) for im in large)
    for path, im in shown.items():
        assert _diff(im, _expected_thumbnail(path)) < SAME, path


def test_a_file_gone_since_the_scan_gets_a_placeholder(tmp_path, tiny_onnx_model):
    paths = write_jpegs(tmp_path / "imgs", 3)
    url = f"sqlite:///{tmp_path / 'd.db'}"
    assert cli("scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", url).exit_code == 0
    paths[1].unlink()
    out = tmp_path / "r.html"
    assert cli("report", "1", "--db", url, "--out", str(out), "--top", "3").exit_code == 0
    page = Page(out.read_text(encoding="utf-8"))
    assert len(page.all("img")) == 2
    placeholders = [a for a in page.all("svg") if a.get("class") == "placeholder"]
    assert len(placeholders) == 1 and "vanished" in placeholders[0]["aria-label"]


def test_unknown_scan_and_unwritable_output_are_one_line_errors(scanned, tmp_path):
    url, _, _ = scanned
    res = CliRunner().invoke(main, ["report", "999", "--db", url, "--out", str(tmp_path / "r.html")])
    assert res.exit_code != 0 and "999" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["report", "1", "--db", url, "--out", str(tmp_path / "no" / "such" / "r.html")])
    assert res.exit_code != 0 and "cannot write" in res.output and "Traceback" not in res.output


# --- in a real browser ---------------------------------------------------------------------

# Appended to a copy of the page: after load, records what the browser made of
# every image and figure, and every resource it fetched, in a <pre id="probe">.
PROBE = """<script>
window.addEventListener('load', () => {
  const box = (el) => { const r = el.getBoundingClientRect(); return {x: r.x + scrollX, y: r.y + scrollY, w: r.width, h: r.height}; };
  const out = {
    images: [...document.images].map(i => ({path: i.closest('figure').dataset.path, complete: i.complete,
                                             naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight, box: box(i)})),
    svgs: [...document.querySelectorAll('svg[id]')].map(s => ({id: s.id, box: box(s),
             bars: [...s.querySelectorAll('rect.bar')].map(box)})),
    fetched: performance.getEntriesByType('resource').map(e => e.name),
    height: document.documentElement.scrollHeight,
  };
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [BROWSER, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120, check=False,
        )


@needs_browser
def test_report_renders_in_headless_chromium(scanned, report_page: Path, tmp_path):
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(report_page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = chromium("--virtual-time-budget=10000", "--window-size=1200,900", "--dump-dom", probe_page.as_uri())
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.DOTALL)
    assert match, f"no probe output from Chromium (rc {done.returncode}): {done.stderr[-2000:]}"
    probe = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))

    assert probe["fetched"] == [], "the page fetched something"
    assert len(probe["images"]) == TOP
    for img in probe["images"]:
        assert img["complete"] and img["naturalWidth"] > 0 and img["naturalHeight"] > 0, img
        assert img["box"]["w"] > 0 and img["box"]["h"] > 0, img
    svgs = {s["id"]: s for s in probe["svgs"]}
    for figure in ("histogram", "errors"):
        assert svgs[figure]["box"]["w"] > 0 and svgs[figure]["box"]["h"] > 0, figure
        assert svgs[figure]["bars"] and all(b["w"] > 0 and b["h"] > 0 for b in svgs[figure]["bars"]), figure

    # The same page as pixels: each thumbnail is on screen where the layout put it,
    # and the histogram's bars are drawn in their colour.
    shot = tmp_path / "shot.png"
    height = min(int(probe["height"]) + 10, 8000)
    done = chromium("--virtual-time-budget=10000", f"--window-size=1200,{height}", f"--screenshot={shot}", report_page.as_uri())
    assert shot.exists(), done.stderr[-2000:]
    screen = Image.open(shot).convert("RGB")
    for img in probe["images"]:
        b = img["box"]
        crop = screen.crop((round(b["x"]), round(b["y"]), round(b["x"] + b["w"]), round(b["y"] + b["h"])))
        assert _diff(crop, _expected_thumbnail(img["path"])) < SAME, img["path"]
    hist = svgs["histogram"]["bars"][0]
    centre = screen.getpixel((round(hist["x"] + hist["w"] / 2), round(hist["y"] + hist["h"] / 2)))
    assert centre in ((0xC0, 0x39, 0x2B), (0x2C, 0x7B, 0xE5)), centre


# --- with explanations (dfscan explain) ---------------------------------------------------------------------------

@needs_browser
def test_report_shows_heatmap_overlays_that_load_in_headless_chromium(scanned, tiny_onnx_model, tmp_path):
    """Overlays beside the thumbnails, how they were computed, every image loading and nothing fetched."""
    url, summary, base = scanned
    shutil.copy(base / "dfscan.db", tmp_path / "dfscan.db")  # the module's scan stays without explanations
    url = f"sqlite:///{tmp_path / 'dfscan.db'}"
    checkpoint = tiny_onnx_model.parent / "checkpoint" / "tiny.pt"
    res = cli("explain", str(summary["scan_id"]), "--db", url, "--checkpoint", str(checkpoint), "--top", str(TOP),
              "--json")
    assert res.exit_code == 0, res.output
    explained = json.loads(res.output)["explained"]
    assert explained > 0
    out = tmp_path / "report.html"
    assert cli("report", str(summary["scan_id"]), "--db", url, "--out", str(out), "--top", str(TOP)).exit_code == 0
    source = out.read_text(encoding="utf-8")
    page = Page(source)
    assert 'id="explanations-note"' in source and "LayerGradCam" in source and "backbone.14" in source
    overlays = [a for a in page.all("img") if a.get("class") == "overlay"]
    assert len(overlays) == explained
    assert len(page.all("img")) == TOP + explained
    for img in overlays:
        assert img["src"].startswith("data:image/png;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))
        assert im.format == "PNG" and max(im.size) <= THUMB
        assert re.match(r"heatmap: peak at \(\d+, \d+\) of \d+x\d+", img["alt"])
    refs = [v for _, attrs in page.tags for k, v in attrs.items() if k in ("src", "href", "srcset", "poster", "data")]
    assert all(v.startswith("data:") for v in refs)

    probe_page = tmp_path / "probe.html"
    probe_page.write_text(source.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = chromium("--virtual-time-budget=10000", "--window-size=1200,900", "--dump-dom", probe_page.as_uri())
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.DOTALL)
    assert match, f"no probe output from Chromium (rc {done.returncode}): {done.stderr[-2000:]}"
    probe = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert probe["fetched"] == [], "the page fetched something"
    assert len(probe["images"]) == TOP + explained
    for img in probe["images"]:
        assert img["complete"] and img["naturalWidth"] > 0 and img["naturalHeight"] > 0, img
        assert img["box"]["w"] > 0 and img["box"]["h"] > 0, img
