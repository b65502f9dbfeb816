"""Provenance (#24) everywhere an analyst looks: the scan summary, `dfscan results --declared`, the HTML
report's badges, and `/v1/scans/{id}/results` (JSON and CSV) of a real `dfscan serve`.

Every check starts from a real scan of real files that say where they come from (tests/_provenance_files:
a signed and a tampered C2PA JPEG, Stable Diffusion and ComfyUI settings in PNG text chunks, IPTC source
types in XMP, one with markup in its CreatorTool, and a plain JPEG).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from dfscan.cli import main
from tests._cluster import free_port, wait_for
from tests._models import tiny_onnx_model  # noqa: F401 - fixture
from tests._provenance_files import HOSTILE, SIGNER, write_provenance_files

DECLARED = {"signed.jpg", "tampered.jpg", "sd.png", "comfy.png", "xmp_ai.jpg", "watermarked.png"}


def cli(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_provenance_files(tmp_path_factory.mktemp("provenance") / "files")


@pytest.fixture
def scanned(db_url: str, files: dict[str, Path], tiny_onnx_model: Path) -> tuple[str, dict]:  # noqa: F811
    """A real scan of the files (SQLite and PostgreSQL): (db_url, the scan's --json summary)."""
    folder = str(next(iter(files.values())).parent)
    return db_url, json.loads(cli("scan", folder, "--model", str(tiny_onnx_model), "--db", db_url, "--json"))


def test_the_summary_counts_manifests_invalid_ones_and_declared_files(scanned) -> None:
    db_url, summary = scanned
    assert (summary["total"], summary["errors"]) == (8, 0)
    want = {"manifests": 2, "invalid_manifests": 1, "declared_synthetic": len(DECLARED)}
    assert {k: summary[k] for k in want} == want
    status = json.loads(cli("status", str(summary["scan_id"]), "--db", db_url, "--json"))
    assert {k: status[k] for k in want} == want
    text = cli("status", str(summary["scan_id"]), "--db", db_url)
    assert f"2 with a C2PA manifest (1 invalid), {len(DECLARED)} declared synthetic" in text


def test_results_declared_keeps_the_files_that_say_they_were_generated(scanned) -> None:
    db_url, summary = scanned
    rows = json.loads(cli("results", "--scan", str(summary["scan_id"]), "--db", db_url, "--declared",
                          "--format", "json"))
    assert {Path(r["path"]).name for r in rows} == DECLARED
    assert all(r["synthetic_declared"] is True for r in rows)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert (by_name["tampered.jpg"]["c2pa"], by_name["tampered.jpg"]["c2pa_state"]) == ("embedded", "invalid")
    assert "assertion.dataHash.mismatch" in by_name["tampered.jpg"]["c2pa_codes"]
    assert by_name["signed.jpg"]["signer"] == SIGNER
    assert by_name["xmp_ai.jpg"]["source_type"] == "trainedAlgorithmicMedia"
    # The option's variable does the same; without either, every row, each with its provenance columns.
    from_env = cli("results", "--scan", str(summary["scan_id"]), "--db", db_url, "--format", "csv",
                   env={"DFSCAN_RESULTS_DECLARED": "1"})
    assert {Path(r["path"]).name for r in csv.DictReader(io.StringIO(from_env))} == DECLARED
    every = list(csv.DictReader(io.StringIO(cli("results", "--scan", str(summary["scan_id"]), "--db", db_url,
                                                "--format", "csv"))))
    assert len(every) == 8 and {r["synthetic_declared"] for r in every} == {"True", "False"}
    table = cli("results", "--scan", str(summary["scan_id"]), "--db", db_url, "--declared")
    tampered = next(line for line in table.splitlines() if "tampered.jpg" in line)
    assert "C2PA invalid" in tampered and "assertion.dataHash.mismatch" in tampered and "declared synthetic" in tampered


class _Tags(HTMLParser):
    def __init__(self, source: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(source)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _between(page: str, start: str, end: str) -> str:
    assert start in page, start
    return page.split(start, 1)[1].split(end, 1)[0]


def test_the_report_shows_a_provenance_badge_beside_each_verdict_escaped(scanned, files: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    db_url, summary = scanned
    out = tmp_path / "report.html"
    cli("report", str(summary["scan_id"]), "--db", db_url, "--out", str(out))
    page = out.read_text()
    # Markup from a file's metadata is text on the page: no tag of it, only its escaped form.
    assert HOSTILE not in page and "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert not [a for t, a in _Tags(page).tags if t in ("script", "img") and a.get("src") in ("x", None)]
    for name in DECLARED | {"camera.jpg"}:  # the provenance table: every file that says something, its verdict
        row = _between(page, f'<tr data-path="{files[name.split(".")[0]]}">', "</tr>")
        assert 'class="prov"' in row and ("real" in row or "fake" in row), name
    # Beside each suspect's verdict (every file here is among the suspects).
    badge = _between(page, f'<figure class="suspect" data-path="{files["tampered"]}">', "</figure>")
    assert "C2PA invalid" in badge and "assertion.dataHash.mismatch" in badge and SIGNER in badge
    assert "declared synthetic" in badge and "trainedAlgorithmicMedia" in badge
    assert "watermark SDXL (BER 0.0" in _between(page, f'<figure class="suspect" data-path="{files["watermarked"]}">',
                                                  "</figure>")
    assert 'class="prov"' not in _between(page, f'<figure class="suspect" data-path="{files["plain"]}">', "</figure>")
    assert "declared synthetic</div>" in page and "invalid manifests</div>" in page  # the summary's cards


def _serve(model: Path, db_url: str, roots: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dfscan.cli", "serve", "--model", str(model), "--db", db_url, "--port", str(port),
         "--host", "127.0.0.1", "--roots", str(roots), "--runtime", "onnxruntime", "--decoder", "pillow"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "DFSCAN_THREADS": "1"},
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 90, "dfscan serve to be ready")
    return proc, url


@pytest.mark.timeout(240)
def test_the_api_returns_each_rows_provenance_in_json_and_csv(files: dict[str, Path],
                                                              tiny_onnx_model: Path,  # noqa: F811
                                                              sqlite_url: str, tmp_path: Path) -> None:
    token = json.loads(cli("api-key", "create", "--name", "prov", "--db", sqlite_url, "--json"))["token"]
    folder = next(iter(files.values())).parent
    proc, url = _serve(tiny_onnx_model, sqlite_url, folder.parent, tmp_path / "serve.log")
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            r = client.post("/v1/scans", json={"roots": [str(folder)], "name": "provenance"})
            assert r.status_code == 202, r.text
            scan_id = r.json()["scan_id"]
            final = wait_for(lambda: (s := client.get(f"/v1/scans/{scan_id}").json())["status"] != "running" and s,
                             120, "the scan to end")
            assert (final["manifests"], final["invalid_manifests"], final["declared_synthetic"]) == (2, 1, 6)
            rows = {Path(r["path"]).name: r for r in client.get(f"/v1/scans/{scan_id}/results").json()["results"]}
            text = client.get(f"/v1/scans/{scan_id}/results", params={"format": "csv", "limit": 0}).text
            declared = client.get(f"/v1/scans/{scan_id}/results", params={"declared": "true"}).json()["results"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert set(rows) == set(files_names(files))
    assert {n for n, r in rows.items() if r["synthetic_declared"]} == DECLARED
    assert {Path(r["path"]).name for r in declared} == DECLARED  # ?declared=true
    tampered = rows["tampered.jpg"]["provenance"]
    assert (tampered["c2pa"], tampered["c2pa_state"], tampered["signer"]) == ("embedded", "invalid", SIGNER)
    assert "assertion.dataHash.mismatch" in tampered["c2pa_codes"] and tampered["synthetic_declared"] is True
    assert rows["plain.jpg"]["provenance"]["c2pa"] == "none" and rows["plain.jpg"]["synthetic_declared"] is False
    assert rows["xmp_ai.jpg"]["provenance"]["generator"] == HOSTILE  # data, as the file said it
    assert rows["watermarked.png"]["provenance"]["watermark"] == "SDXL"
    table = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(text))}
    assert table["tampered.jpg"]["c2pa_state"] == "invalid" and table["sd.png"]["synthetic_declared"] == "True"
    assert table["camera.jpg"]["source_type"] == "digitalCapture"


def files_names(files: dict[str, Path]) -> list[str]:
    return [p.name for p in files.values()]
