"""Provenance (#24): C2PA manifests, IPTC/XMP source types, generator settings and invisible watermarks,
read for every file on real files made here, written to ``scan_provenance`` beside the verdict.

Every file is made by the tests: signed with c2pa-python's Builder and a CA + ES256 signer made with
``cryptography``, tampered after signing, pointing to a remote manifest on a 127.0.0.1 listener that
records connections (none may arrive), XMP written as generators write it, PNG text chunks as the
AUTOMATIC1111 web UI and ComfyUI write them, watermarks embedded with invisible-watermark's encoder.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import socket
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from click.testing import CliRunner
from PIL import Image, PngImagePlugin
from sqlalchemy import inspect, text

from dfscan import db
from dfscan.cli import main
from dfscan.db.paths import path_hash
from dfscan.db.records import ProvenanceRow
from dfscan.workers.provenance import KNOWN_WATERMARKS, MAX_BER, ProvenanceReader
from dfscan.workers.provenance.containers import MAX_MANIFEST_BYTES, MAX_TEXT_BYTES
from dfscan.workers.provenance.watermarks import block_bits, votes_of
from tests._images import pattern
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
SIGNER, GENERATOR = "dfscan test signer", "dfscan-test-generator 1.0"
A1111 = ("a portrait of an astronaut, studio light\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, "
         "CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
         "Version: v1.6.0")
COMFY_PROMPT = json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20}},
                           "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}}})
XMP = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
 xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
 xmp:CreatorTool="Adobe Firefly"
 Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"/>
</rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>"""
BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<x:xmpmeta xmlns:x="adobe:ns:meta/">&lol9;</x:xmpmeta>"""


# --- files made as signers and generators make them -------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    chain: bytes  # the signer's certificate, then the CA's (PEM)
    key: bytes
    ca: bytes


def make_credentials() -> Credentials:
    """A CA and an ES256 signer it issued, as c2pa wants them (key usage, e-mail protection, key identifiers)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dfscan tests")])

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def builder(subject: str, issuer: x509.Name, public) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer).public_key(public)
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=30))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))

    ca = (builder("dfscan test CA", name("dfscan test CA"), ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (builder(SIGNER, ca.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return Credentials(cert.public_bytes(pem) + ca.public_bytes(pem),
                       key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
                       ca.public_bytes(pem))


def sign(source: bytes, mime: str, creds: Credentials, *, remote_url: str | None = None) -> bytes:
    """``source`` with a manifest (a generator's: created by trained algorithmic media), embedded or remote."""
    import c2pa

    manifest = {"claim_generator_info": [{"name": "dfscan-test-generator", "version": "1.0"}], "format": mime,
                "title": "generated", "assertions": [{"label": "c2pa.actions", "data": {"actions": [
                    {"action": "c2pa.created", "digitalSourceType": IPTC + "trainedAlgorithmicMedia"}]}}]}
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", creds.chain, creds.key, None))
    builder = c2pa.Builder(json.dumps(manifest))
    if remote_url is not None:
        builder.set_no_embed()
        builder.set_remote_url(remote_url)
    out = io.BytesIO()
    builder.sign(signer, mime, io.BytesIO(source), out)
    return out.getvalue()


def photo(name: str, size: int | None = None) -> Image.Image:
    a = getattr(skimage.data, name)()
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    im = Image.fromarray(a[..., :3].astype(np.uint8))
    return im.resize((size, size)) if size else im


def encoded(im: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def watermarked(im: Image.Image, name: str) -> Image.Image:
    """``im`` with the known message ``name`` embedded as the Stable Diffusion scripts embed it."""
    from imwatermark import WatermarkEncoder

    known = next(k for k in KNOWN_WATERMARKS if k.name == name)
    encoder = WatermarkEncoder()
    if name == "StableDiffusionV1":
        encoder.set_watermark("bytes", b"StableDiffusionV1")
    else:
        encoder.set_watermark("bits", list(known.bits))
    bgr = encoder.encode(np.ascontiguousarray(np.asarray(im)[..., ::-1]), "dwtDct")
    return Image.fromarray(np.ascontiguousarray(bgr[..., ::-1]))


def jpeg_with_segment(jpeg: bytes, marker: int, body: bytes) -> bytes:
    """``jpeg`` with one more segment (APPn) right after its SOI."""
    return jpeg[:2] + struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body + jpeg[2:]


def png_with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """``png`` with one more chunk right after IHDR (where generators write their text)."""
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return png[:33] + chunk + png[33:]


def user_comment_jpeg(im: Image.Image, comment: str) -> bytes:
    """A JPEG whose EXIF UserComment holds the settings, as the web UI's piexif writes it (UNICODE, UTF-16 BE)."""
    exif = Image.Exif()
    exif[0x0131] = "dfscan test"
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + comment.encode("utf-16-be")
    return encoded(im, "JPEG", quality=92, exif=exif.tobytes())


def tampered(signed_jpeg: bytes) -> bytes:
    """The signed JPEG with some of its pixels changed after signing (entropy-coded bytes near the end)."""
    data = bytearray(signed_jpeg)
    for i in range(len(data) - 400, len(data) - 300):
        if data[i] not in (0xFF, 0x00) and data[i - 1] != 0xFF:
            data[i] ^= 0x11
    return bytes(data)


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection made to it (none may arrive)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections: list[tuple] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.connections.append(peer)
            conn.close()

    def close(self) -> None:
        self.sock.close()


# What each file's provenance must read: scan_provenance's columns (codes: those that must be among them).
EXPECT: dict[str, dict] = {
    "plain.jpg": dict(c2pa="none", synthetic_declared=False),
    "signed.jpg": dict(c2pa="embedded", c2pa_state="valid", codes={"signingCredential.untrusted"}, signer=SIGNER,
                       generator=GENERATOR, source_type="trainedAlgorithmicMedia", synthetic_declared=True),
    "signed_copy.jpg": dict(c2pa="embedded", c2pa_state="valid", signer=SIGNER, synthetic_declared=True),
    "tampered.jpg": dict(c2pa="embedded", c2pa_state="invalid", codes={"assertion.dataHash.mismatch"},
                         signer=SIGNER, synthetic_declared=True),
    "remote.jpg": dict(c2pa="remote", c2pa_state=None, signer=None, synthetic_declared=False),
    "firefly_xmp.jpg": dict(c2pa="none", generator="Adobe Firefly", source_type="trainedAlgorithmicMedia",
                            synthetic_declared=True),
    "a1111.png": dict(c2pa="none", generator="Stable Diffusion web UI (v1-5-pruned-emaonly)",
                      synthetic_declared=True, settings_key="parameters"),
    "comfy.png": dict(c2pa="none", generator="ComfyUI", synthetic_declared=True, settings_key="prompt"),
    "usercomment.jpg": dict(c2pa="none", generator="Stable Diffusion web UI (v1-5-pruned-emaonly)",
                            synthetic_declared=True, settings_key="UserComment"),
    "wm_v1.png": dict(c2pa="none", watermark="StableDiffusionV1", synthetic_declared=True),
    "wm_xl.png": dict(c2pa="none", watermark="SDXL", synthetic_declared=True),
    "broken_xmp.jpg": dict(c2pa="error", error="XMP packet is not XML", synthetic_declared=False),
    "bomb_xmp.jpg": dict(c2pa="error", error="XMP packet refused", synthetic_declared=False),
    "giant_text.png": dict(c2pa="error", error="over the", synthetic_declared=False),
    "bad_manifest.jpg": dict(c2pa="error", error="C2PA", synthetic_declared=False),
}


def make_files(folder: Path, creds: Credentials, remote_url: str) -> dict[str, Path]:
    """Every file of :data:`EXPECT` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    small = photo("coffee").resize((300, 200))
    signed = sign(encoded(small, "JPEG", quality=90), "image/jpeg", creds)
    xmp_jpeg = jpeg_with_segment(encoded(photo("chelsea"), "JPEG", quality=85), 0xE1,
                                 b"http://ns.adobe.com/xap/1.0/\x00" + XMP.encode("utf-8"))
    a1111, comfy = PngImagePlugin.PngInfo(), PngImagePlugin.PngInfo()
    a1111.add_text("parameters", A1111)
    comfy.add_text("prompt", COMFY_PROMPT)
    comfy.add_text("workflow", json.dumps({"nodes": [{"id": 3, "type": "KSampler"}], "links": []}))
    plain_png = encoded(pattern(5, (128, 128)), "PNG")
    files = {
        "plain.jpg": encoded(photo("rocket"), "JPEG", quality=85),
        "signed.jpg": signed, "signed_copy.jpg": signed, "tampered.jpg": tampered(signed),
        "remote.jpg": sign(encoded(small.rotate(90), "JPEG", quality=90), "image/jpeg", creds, remote_url=remote_url),
        "firefly_xmp.jpg": xmp_jpeg,
        "a1111.png": encoded(pattern(1, (192, 192)), "PNG", pnginfo=a1111),
        "comfy.png": encoded(pattern(2, (192, 192)), "PNG", pnginfo=comfy),
        "usercomment.jpg": user_comment_jpeg(pattern(3, (192, 192)), A1111),
        "wm_v1.png": encoded(watermarked(photo("astronaut"), "StableDiffusionV1"), "PNG"),
        "wm_xl.png": encoded(watermarked(photo("camera"), "SDXL"), "PNG"),
        "broken_xmp.jpg": jpeg_with_segment(encoded(pattern(6, (128, 128)), "JPEG"), 0xE1,
                                            b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><rdf:RDF><unclosed"),
        "bomb_xmp.jpg": jpeg_with_segment(encoded(pattern(7, (128, 128)), "JPEG"), 0xE1,
                                          b"http://ns.adobe.com/xap/1.0/\x00" + BOMB.encode()),
        "giant_text.png": png_with_chunk(plain_png, b"tEXt", b"Comment\x00" + b"x" * (MAX_TEXT_BYTES + 1)),
        # A JUMBF box that claims a C2PA manifest store and holds garbage.
        "bad_manifest.jpg": jpeg_with_segment(encoded(pattern(8, (128, 128)), "JPEG"), 0xEB,
                                              b"JP\x00\x00\x00\x00\x00\x01" + struct.pack(">I", 64) + b"jumb"
                                              + struct.pack(">I", 24) + b"jumdc2pa" + b"\x00" * 16 + b"\xde\xad" * 20),
    }
    paths = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    return paths


def check(found: dict, name: str) -> None:
    """A file's provenance (a scan_provenance row, a ProvenanceRow as a dict, or /v1/score's object) as expected."""
    want = dict(EXPECT[name])
    codes = want.pop("codes", set())
    error = want.pop("error", None)
    want.pop("settings_key", None)
    got_codes = found.get("c2pa_codes") or ""
    got_codes = set(got_codes if isinstance(got_codes, list) else got_codes.split(","))
    assert {k: found.get(k) for k in want} == want, (name, found)
    assert codes <= got_codes, (name, found)
    if error is not None:
        assert error in (found.get("error") or ""), (name, found)
    if want.get("watermark"):
        assert found["watermark_ber"] <= MAX_BER


def as_view(p: ProvenanceRow) -> dict:
    return {"c2pa": p.c2pa, "c2pa_state": p.c2pa_state, "c2pa_codes": p.codes, "signer": p.signer,
            "generator": p.generator, "source_type": p.source_type, "watermark": p.watermark,
            "watermark_ber": p.watermark_ber, "synthetic_declared": p.synthetic_declared, "error": p.error,
            "settings_key": p.settings_key}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory):
    """The files, their credentials and the listener their remote manifest points to (kept open for the module)."""
    listener = Listener()
    creds = make_credentials()
    folder = tmp_path_factory.mktemp("provenance") / "media"
    paths = make_files(folder, creds, f"http://127.0.0.1:{listener.port}/manifest.c2pa")
    yield folder, paths, creds, listener
    listener.close()
    assert listener.connections == [], "a remote manifest was fetched"


# --- the reader on each file -------------------------------------------------------------------------------


def test_each_file_reads_as_its_maker_wrote_it(media) -> None:
    folder, paths, creds, listener = media
    reader = ProvenanceReader()
    for name, path in paths.items():
        row = reader.image(path.read_bytes())
        check(as_view(row), name)
        if "settings_key" in EXPECT[name]:
            assert row.settings_key == EXPECT[name]["settings_key"]
    assert listener.connections == []


def test_a_signer_chaining_to_the_trust_anchors_is_trusted(media) -> None:
    _, paths, creds, _ = media
    row = ProvenanceReader(creds.ca.decode()).image(paths["signed.jpg"].read_bytes())
    assert (row.c2pa, row.c2pa_state, row.codes, row.issuer) == ("embedded", "trusted", None, "dfscan tests")
    tampered_row = ProvenanceReader(creds.ca.decode()).image(paths["tampered.jpg"].read_bytes())
    assert tampered_row.c2pa_state == "invalid" and "assertion.dataHash.mismatch" in tampered_row.codes


def test_an_oversized_manifest_store_is_an_error_unread() -> None:
    png = png_with_chunk(encoded(pattern(9, (64, 64)), "PNG"), b"caBX", b"\x00" * (MAX_MANIFEST_BYTES + 1))
    row = ProvenanceReader().image(png)
    assert row.c2pa == "error" and "over the" in row.error and "C2PA manifest store" in row.error


def test_cut_short_and_bomb_texts_are_errors_with_reasons() -> None:
    """An iTXt chunk cut short, and a zTXt chunk that inflates past the cap (a zip bomb), read as errors."""
    png = encoded(pattern(10, (64, 64)), "PNG")
    short = ProvenanceReader().image(png_with_chunk(png, b"iTXt", b"XML:com.adobe.xmp\x00"))
    assert short.c2pa == "error" and "cut short" in short.error
    bomb = zlib.compress(b"\x00" * (MAX_TEXT_BYTES + 1), 9)
    inflated = ProvenanceReader().image(png_with_chunk(png, b"zTXt", b"parameters\x00\x00" + bomb))
    assert inflated.c2pa == "error" and "inflates past" in inflated.error and len(bomb) < MAX_TEXT_BYTES // 100


def test_the_watermark_bits_are_invisible_watermarks_own(media) -> None:
    """The vectorised decoding gives the bits imwatermark's WatermarkDecoder gives, for every message length."""
    from imwatermark import WatermarkDecoder

    for im in (watermarked(photo("astronaut"), "StableDiffusionV1"), watermarked(photo("camera"), "SDXL"),
               photo("coffee"), pattern(4, (300, 280))):
        rgb = np.asarray(im)
        votes = votes_of(rgb)
        for length in (136, 48):
            theirs = WatermarkDecoder("bits", length).decode(np.ascontiguousarray(rgb[..., ::-1]), "dwtDct")
            assert block_bits(votes, length).tolist() == [int(b) for b in theirs]


UNWATERMARKED = ("astronaut", "coffee", "chelsea", "camera", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "cat", "page", "text", "moon", "brick", "grass", "gravel", "colorwheel", "coins", "horse",
                 "logo", "clock", "shepp_logan_phantom", "binary_blobs")


def test_unwatermarked_images_match_no_known_message() -> None:
    """The threshold's measurement: 22 scikit-image photographs, 8 synthetic patterns and a flat image, each as is
    and after JPEG at quality 90: none matches, and the closest is far above the threshold."""
    from dfscan.workers.provenance import match_watermark

    images = []
    for name in UNWATERMARKED:
        a = np.asarray(getattr(skimage.data, name)())
        a = (a.astype(np.uint8) * 255 if a.dtype == bool else
             (255 * (a - a.min()) / max(np.ptp(a), 1e-9)).astype(np.uint8) if a.dtype != np.uint8 else a)
        images.append(Image.fromarray(np.stack([a] * 3, axis=-1) if a.ndim == 2 else a[..., :3]))
    images += [pattern(seed, (512, 512)) for seed in range(8)] + [Image.new("RGB", (512, 512), (128, 128, 128))]
    bers = []
    for im in images:
        for version in (im, Image.open(io.BytesIO(encoded(im.convert("RGB"), "JPEG", quality=90)))):
            m = match_watermark(np.asarray(version.convert("RGB")))
            if m is not None:
                bers.append(m.ber)
                assert m.name is None, (m, im.size)
    print(f"{len(bers)} unwatermarked images: 0 matched; lowest bit error rate {min(bers):.3f} "
          f"(threshold {MAX_BER})")
    assert len(bers) >= 60 and min(bers) > 2 * MAX_BER


# --- through a scan, a fleet worker and the server --------------------------------------------------------


def cli(*args: str, env: dict | None = None):
    out = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return out


def view_rows(url: str, scan_id: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """``scan_results`` and ``scan_provenance`` (with ``result_provenance``'s reason) by file name."""
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            results = {Path(r["path"]).name: dict(r) for r in conn.execute(
                text("SELECT * FROM scan_results WHERE scan_id = :s"), {"s": scan_id}).mappings()}
            provenance = {Path(r["path"]).name: dict(r) for r in conn.execute(text(
                "SELECT v.*, p.error AS error FROM scan_provenance AS v JOIN result_provenance AS p "
                "ON p.scan_id = v.scan_id AND p.path_hash = v.path_hash WHERE v.scan_id = :s"), {"s": scan_id}).mappings()}
            columns = tuple(c["name"] for c in inspect(conn).get_columns("scan_provenance"))
    finally:
        engine.dispose()
    assert columns == ("scan_id", "path", "c2pa", "c2pa_state", "c2pa_codes", "signer", "generator", "source_type",
                       "watermark", "watermark_ber", "synthetic_declared", "path_hash")
    return results, provenance


def check_scan(url: str, scan_id: int) -> None:
    """Every file one row with its verdict, and its provenance as its maker wrote it."""
    results, provenance = view_rows(url, scan_id)
    assert set(results) == set(EXPECT) == set(provenance)
    for name, row in results.items():
        assert row["status"] == "ok" and row["label"] in ("real", "fake"), (name, row)
        assert bool(row["synthetic_declared"]) == EXPECT[name]["synthetic_declared"], name
        check(provenance[name], name)
    assert results["signed_copy.jpg"]["verdict_source"] == "copy"


@pytest.mark.timeout(300)
def test_a_scan_writes_every_files_provenance(media, db_url: str, tiny_onnx_model: Path,  # noqa: F811
                                              tmp_path: Path) -> None:
    folder, paths, creds, listener = media
    out = cli("scan", str(folder), "--model", str(tiny_onnx_model), "--db", db_url, "--json")
    check_scan(db_url, json.loads(out.stdout)["scan_id"])
    assert listener.connections == []
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(creds.ca)
    only = tmp_path / "only"
    only.mkdir()
    (only / "signed.jpg").write_bytes(paths["signed.jpg"].read_bytes())
    out = cli("scan", str(only), "--model", str(tiny_onnx_model), "--db", db_url, "--json",
              env={"DFSCAN_C2PA_TRUST_ANCHORS": str(anchors)})
    _, provenance = view_rows(db_url, json.loads(out.stdout)["scan_id"])
    assert (provenance["signed.jpg"]["c2pa_state"], provenance["signed.jpg"]["c2pa_codes"]) == ("trusted", None)
    off = cli("scan", str(only), "--model", str(tiny_onnx_model), "--db", db_url, "--no-provenance", "--json")
    results, provenance = view_rows(db_url, json.loads(off.stdout)["scan_id"])
    assert results["signed.jpg"]["synthetic_declared"] is None and provenance == {}


def test_trust_anchors_that_are_no_certificates_stop_the_scan_before_work(tmp_path: Path, sqlite_url: str,
                                                                          tiny_onnx_model: Path) -> None:  # noqa: F811
    bad = tmp_path / "anchors.pem"
    bad.write_text("not a certificate\n")
    out = CliRunner().invoke(main, ["scan", str(tmp_path), "--model", str(tiny_onnx_model), "--db", sqlite_url,
                                    "--c2pa-trust-anchors", str(bad)])
    assert out.exit_code != 0 and "hold no PEM certificate" in out.output and "Traceback" not in out.output


@pytest.mark.timeout(300)
def test_a_fleet_worker_writes_provenance(media, tiny_onnx_model: Path, redis_server,  # noqa: F811
                                          pg_url: str, tmp_path: Path) -> None:
    """A real ``dfscan worker`` (Celery over Redis) reads each file's provenance and writes it with the rows."""
    from tests._cluster import Worker, wait_for

    folder, _, _, listener = media
    (tmp_path / "logs").mkdir()
    broker = redis_server.url()
    worker = Worker(broker, pg_url, tmp_path / "logs")
    engine = db.make_engine(pg_url)
    try:
        worker.wait_ready()
        out = cli("scan", str(folder), "--model", str(tiny_onnx_model), "--db", pg_url, "--broker", broker,
                  "--chunk-size", "5", "--json")
        scan_id = json.loads(out.stdout)["scan_id"]

        def status() -> str | None:
            with engine.connect() as conn:
                s = conn.execute(text("SELECT status FROM scans WHERE id = :s"), {"s": scan_id}).scalar_one()
            return None if s == "running" else s

        assert wait_for(status, 180, "the scan to complete", interval=0.3) == "completed", worker.log()[-3000:]
    finally:
        worker.stop()
        engine.dispose()
    results, provenance = view_rows(pg_url, scan_id)
    assert set(results) == set(EXPECT)
    for name in EXPECT:  # a copy in another chunk than its original is read there
        check(provenance[name], name)
    assert listener.connections == []


@pytest.mark.timeout(300)
def test_v1_score_returns_each_files_provenance(media, sqlite_url: str, tiny_onnx_model: Path,  # noqa: F811
                                                tmp_path: Path) -> None:
    """The server reads uploads as its scans read files: with the operator's trust anchors."""
    import httpx

    from tests.test_serve import _start

    folder, paths, creds, listener = media
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(creds.ca)
    key = json.loads(cli("api-key", "create", "--name", "k", "--db", sqlite_url, "--json").stdout)
    server = _start(tiny_onnx_model, sqlite_url, tmp_path, tmp_path, "--max-upload-bytes", "8000000",
                    "--c2pa-trust-anchors", str(anchors))
    try:
        with httpx.Client(base_url=server.url, timeout=60,
                          headers={"Authorization": f"Bearer {key['token']}"}) as http:
            for name, path in paths.items():
                r = http.post("/v1/score", files=[("file", (name, path.read_bytes()))])
                assert r.status_code == 200, r.text
                (result,) = r.json()["results"]
                assert result["status"] == "ok", (name, result)
                found = result["provenance"]
                if EXPECT[name].get("c2pa_state") == "valid":  # the test's signer chains to the anchors
                    assert (found["c2pa_state"], found["c2pa_codes"]) == ("trusted", []), (name, found)
                else:
                    check(found, name)
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)
    assert listener.connections == []


# --- the schema --------------------------------------------------------------------------------------------


def test_migration_0015_down_and_up_keeps_rows(db_engine) -> None:
    """Downgrade to 0014 drops the provenance table, view and column and keeps the rows; upgrading gives NULLs."""
    at = dt.datetime(2026, 12, 7, tzinfo=dt.timezone.utc)
    declared = ProvenanceRow("embedded", "invalid", "assertion.dataHash.mismatch", "signer", "ca", "gen",
                             source_type="trainedAlgorithmicMedia", synthetic_declared=True)
    with db.session_factory(db_engine).begin() as session:
        model_id = db.get_or_create_model(session, sha256="b" * 64, name="m", path="/m", info={})
        scan_id = db.create_scan(session, name="s", roots=[], model_id=model_id, threshold=0.5, settings={})
        db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=[
            db.ResultRow("/a.jpg", 1, 1.0, "ok", "real", 0.1, 0.9, None, None, at, synthetic_declared=True,
                         provenance=declared),
            db.ResultRow("/b.jpg", 2, 2.0, "ok", "fake", 0.9, 0.9, None, None, at)])
        # Written again (a chunk scored twice): the file's provenance is replaced, not doubled.
        db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=[
            db.ResultRow("/a.jpg", 1, 1.0, "ok", "real", 0.1, 0.9, None, None, at, synthetic_declared=True,
                         provenance=declared)])
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT path, synthetic_declared FROM scan_results ORDER BY path")).all() == [
            ("/a.jpg", True), ("/b.jpg", None)]
        assert [tuple(r) for r in conn.execute(text("SELECT * FROM scan_provenance")).all()] == [
            (scan_id, "/a.jpg", "embedded", "invalid", "assertion.dataHash.mismatch", "signer", "gen",
             "trainedAlgorithmicMedia", None, None, True, path_hash("/a.jpg"))]
    assert tuple(c["name"] for c in inspect(db_engine).get_columns("scan_provenance")) == \
        db.models.PROVENANCE_VIEW_COLUMNS
    db.downgrade(db_engine, "0014")
    insp = inspect(db_engine)
    assert "synthetic_declared" not in {c["name"] for c in insp.get_columns("results")}
    assert "result_provenance" not in insp.get_table_names()
    assert "scan_provenance" not in insp.get_view_names()
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT path, label, pdq FROM scan_results ORDER BY path")).all() == [
            ("/a.jpg", "real", None), ("/b.jpg", "fake", None)]
    db.upgrade(db_engine)
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT path, synthetic_declared FROM scan_results ORDER BY path")).all() == [
            ("/a.jpg", None), ("/b.jpg", None)]
        assert conn.execute(text("SELECT count(*) FROM scan_provenance")).scalar() == 0


@pytest.mark.timeout(300)
def test_a_videos_manifest_and_a_reused_verdicts_provenance(media, sqlite_url: str, tmp_path: Path,
                                                           tiny_onnx_model: Path) -> None:  # noqa: F811
    """A signed video's manifest is read from the file (its row a video's); a verdict reused from an earlier scan
    (--reuse-verdicts) carries the provenance read in this one."""
    from tests._videos import write_video

    _, paths, creds, _ = media
    folder = tmp_path / "v"
    folder.mkdir()
    clip = write_video(tmp_path / "clip.mp4", 10, size=(128, 128),
                       draw=lambda i: np.full((128, 128, 3), i * 20, np.uint8))
    (folder / "signed_clip.mp4").write_bytes(sign(clip.read_bytes(), "video/mp4", creds))
    (folder / "signed.jpg").write_bytes(paths["signed.jpg"].read_bytes())
    first = cli("scan", str(folder), "--model", str(tiny_onnx_model), "--db", sqlite_url, "--json")
    again = cli("scan", str(folder), "--model", str(tiny_onnx_model), "--db", sqlite_url, "--reuse-verdicts", "--json")
    for out, source in ((first, "computed"), (again, "reused")):
        results, provenance = view_rows(sqlite_url, json.loads(out.stdout)["scan_id"])
        assert results["signed_clip.mp4"]["kind"] == "video" and results["signed_clip.mp4"]["status"] == "ok"
        assert results["signed.jpg"]["verdict_source"] == source
        for name in ("signed_clip.mp4", "signed.jpg"):
            p = provenance[name]
            assert (p["c2pa"], p["c2pa_state"], p["signer"], p["source_type"], p["synthetic_declared"]) == (
                "embedded", "valid", SIGNER, "trainedAlgorithmicMedia", True), (name, p)
            assert results[name]["synthetic_declared"]
