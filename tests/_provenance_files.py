"""Image files that say where they come from, written the way generators, editors and signers write them.

C2PA manifests are signed with ``c2pa-python``'s builder and a certificate made here (a test CA and a
signer it issued, with the ``cryptography`` package); a tampered copy changes pixel data after
signing.  XMP packets carry ``Iptc4xmpExt:DigitalSourceType`` and ``xmp:CreatorTool``; PNG text chunks
carry Stable Diffusion web UI ``parameters`` and ComfyUI ``prompt``/``workflow``.  Every string a file
carries can be hostile (``HOSTILE``): the surfaces that show it must escape it.
"""

from __future__ import annotations

import datetime
import functools
import io
import json
from pathlib import Path

from PIL import Image, PngImagePlugin

from tests._images import pattern

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
SIGNER = "dfscan test signer"
# Markup in a file's own metadata (its XMP CreatorTool): shown anywhere, it must stay text.
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
# The 48-bit message SDXL's reference pipeline embeds (Stability-AI/generative-models, sgm/inference/helpers.py).
SDXL_BITS = tuple(int(c) for c in bin(0b101100111110110010010000011110111011000110011110)[2:])
SD_PARAMETERS = ("a photo of a lighthouse at dusk\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, "
                 "CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 31e35c80fc, Model: sd_xl_base_1.0")


def xmp_packet(source_type: str | None = None, creator_tool: str | None = None) -> bytes:
    """An XMP packet as Photoshop, Firefly and most generators write it (rdf:Description attributes)."""
    attrs = []
    if source_type:
        attrs.append(f'Iptc4xmpExt:DigitalSourceType="{IPTC}{source_type}"')
    if creator_tool:
        attrs.append('xmp:CreatorTool="' + creator_tool.replace("&", "&amp;").replace('"', "&quot;")
                     .replace("<", "&lt;").replace(">", "&gt;") + '"')
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        f'xmlns:xmp="http://ns.adobe.com/xap/1.0/" {" ".join(attrs)}/>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode("utf-8")


def save_jpeg_with_xmp(path: Path, im: Image.Image, **xmp: str | None) -> Path:
    im.save(path, "JPEG", quality=90, xmp=xmp_packet(**xmp))
    return path


def save_png_with_text(path: Path, im: Image.Image, **chunks: str) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    im.save(path, "PNG", pnginfo=info)
    return path


def save_watermarked(path: Path, im: Image.Image, bits: tuple[int, ...] = SDXL_BITS) -> Path:
    """``im`` with an invisible DWT-DCT watermark, embedded by ``invisible-watermark``'s encoder as SDXL does."""
    import cv2
    import numpy as np
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", list(bits))
    bgr = encoder.encode(cv2.cvtColor(np.asarray(im.convert("RGB")), cv2.COLOR_RGB2BGR), "dwtDct")
    Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).save(path, "PNG")
    return path


@functools.cache
def signing_identity() -> tuple[bytes, bytes]:
    """(certificate chain PEM: signer then CA, private key PEM) of an ES256 signer issued by a test CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dfscan tests")])

    def usage(sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=not sign,
                             crl_sign=not sign, encipher_only=False, decipher_only=False)

    def cert(subject: str, key, issuer: x509.Name, issuer_key, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(valid[0]).not_valid_after(valid[1])
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(usage(sign=not ca), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if not ca:
            builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                                             critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                      critical=False))
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("dfscan test CA", ca_key, name("dfscan test CA"), ca_key, ca=True)
    leaf = cert(SIGNER, key, ca.subject, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    return (leaf.public_bytes(pem) + ca.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def sign_jpeg(path: Path, im: Image.Image, *, generator: str = "dfscan-tests",
              source_type: str = "trainedAlgorithmicMedia") -> Path:
    """``im`` as a JPEG with an embedded C2PA manifest: a ``c2pa.created`` action with ``source_type``."""
    import c2pa

    chain, key = signing_identity()
    manifest = {"claim_generator_info": [{"name": generator, "version": "1.0"}], "title": path.name,
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [
                    {"action": "c2pa.created", "digitalSourceType": IPTC + source_type}]}}]}
    source, out = io.BytesIO(), io.BytesIO()
    im.save(source, "JPEG", quality=90)
    source.seek(0)
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", chain, key, None))
    with c2pa.Builder(json.dumps(manifest)) as builder:
        builder.sign(signer, "image/jpeg", source, out)
    path.write_bytes(out.getvalue())
    return path


def tamper(signed: Path, out: Path) -> Path:
    """A copy of a signed JPEG whose pixels changed after signing: bytes of its entropy-coded data flipped."""
    data = bytearray(signed.read_bytes())
    start = data.rindex(b"\xff\xda")  # the last start of scan: image data follows its header
    for i in range(start + 40, start + 56):
        if data[i] not in (0xFF, 0x00):
            data[i] ^= 0x0F
    out.write_bytes(bytes(data))
    return out


def write_provenance_files(folder: Path, seed: int = 700) -> dict[str, Path]:
    """One file of each kind, by short name: signed, tampered, sd (PNG parameters), comfy (PNG prompt and
    workflow), xmp_ai (JPEG, trainedAlgorithmicMedia and a hostile CreatorTool), camera (JPEG, digitalCapture),
    watermarked (PNG, SDXL's invisible watermark and nothing else), plain (a JPEG that says nothing)."""
    folder.mkdir(parents=True, exist_ok=True)
    im = lambda i, size=(256, 192): pattern(seed + i, size)  # noqa: E731
    files = {"signed": sign_jpeg(folder / "signed.jpg", im(0), generator="Example Image Model")}
    files["tampered"] = tamper(sign_jpeg(folder / "to_tamper.jpg", im(1), generator="Example Image Model"),
                               folder / "tampered.jpg")
    (folder / "to_tamper.jpg").unlink()
    files["sd"] = save_png_with_text(folder / "sd.png", im(2), parameters=SD_PARAMETERS)
    workflow = {"nodes": [{"type": "CheckpointLoaderSimple", "widgets_values": ["sd_xl_base_1.0.safetensors"]}]}
    files["comfy"] = save_png_with_text(folder / "comfy.png", im(3), prompt=json.dumps({"1": {
        "class_type": "KSampler", "inputs": {"seed": 5, "steps": 20}}}), workflow=json.dumps(workflow))
    files["xmp_ai"] = save_jpeg_with_xmp(folder / "xmp_ai.jpg", im(4), source_type="trainedAlgorithmicMedia",
                                         creator_tool=HOSTILE)
    files["camera"] = save_jpeg_with_xmp(folder / "camera.jpg", im(5), source_type="digitalCapture",
                                         creator_tool="Example Camera 1.0")
    files["watermarked"] = save_watermarked(folder / "watermarked.png", im(7, (512, 512)))
    im(6).save(folder / "plain.jpg", quality=90)
    files["plain"] = folder / "plain.jpg"
    return files
