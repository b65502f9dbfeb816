"""What a file's metadata declares: the IPTC digital source type and creator tool (XMP), the EXIF software,
and generator settings left in the file (PNG text chunks, EXIF UserComment).

XMP is parsed with :mod:`defusedxml`, DTDs refused: an entity bomb ends as a :class:`~.errors.ProvenanceError`
at its DOCTYPE, before any entity is expanded.  Of generator settings only the key found and the generator
it names are kept, from the first :data:`SETTINGS_PEEK` characters; never the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from defusedxml import ElementTree as SafeTree
from defusedxml.common import DefusedXmlException
from PIL import Image

from dfscan.workers.provenance.containers import Metadata
from dfscan.workers.provenance.errors import ProvenanceError

__all__ = ["IPTC_TERMS", "SYNTHETIC_SOURCE_TYPES", "Declarations", "declarations_of", "source_type_term"]

IPTC_TERMS = "http://cv.iptc.org/newscodes/digitalsourcetype/"
# The IPTC terms that say a machine made the content (the list).
SYNTHETIC_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia",
                                    "algorithmicMedia", "compositeSynthetic"})
SETTINGS_PEEK = 64 * 1024
_IPTC_EXT = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}DigitalSourceType"
_CREATOR_TOOL = "{http://ns.adobe.com/xap/1.0/}CreatorTool"
_RDF_RESOURCE = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}resource"
_SOFTWARE, _EXIF_IFD, _USER_COMMENT = 0x0131, 0x8769, 0x9286
_MODEL = re.compile(r"(?:^|, )Model: ([^,\n]{1,100})")


@dataclass(frozen=True)
class Declarations:
    source_type: str | None = None  # the IPTC term's short name
    creator_tool: str | None = None  # XMP CreatorTool, else EXIF Software
    settings_key: str | None = None  # 'parameters', 'prompt', 'workflow' or 'UserComment'
    settings_generator: str | None = None


def source_type_term(value: str | None) -> str | None:
    """``http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia`` -> ``trainedAlgorithmicMedia``."""
    if not value:
        return None
    value = value.strip()
    return value.rsplit("/", 1)[-1][:64] or None


def declarations_of(meta: Metadata) -> Declarations:
    """What ``meta`` declares; raises :class:`ProvenanceError` on a broken XMP packet or EXIF block."""
    source_type, creator_tool = _xmp(meta.xmp) if meta.xmp else (None, None)
    software, comment = _exif(meta.exif) if meta.exif else (None, None)
    key, generator = _settings(meta.texts, comment)
    return Declarations(source_type, creator_tool or software or meta.texts.get("Software"), key, generator)


def _xmp(packet: bytes) -> tuple[str | None, str | None]:
    try:
        root = SafeTree.fromstring(packet.strip(b"\x00 \r\n\t"), forbid_dtd=True, forbid_entities=True,
                                   forbid_external=True)
    except DefusedXmlException as exc:
        raise ProvenanceError(f"XMP packet refused: {type(exc).__name__} (DTDs and entities are not read)") from None
    except SafeTree.ParseError as exc:
        raise ProvenanceError(f"XMP packet is not XML: {exc}") from None
    source_type = creator_tool = None
    for element in root.iter():
        if source_type is None:
            value = element.get(_IPTC_EXT)
            if element.tag == _IPTC_EXT:
                value = element.get(_RDF_RESOURCE) or element.text
            source_type = source_type_term(value)
        if creator_tool is None:
            tool = element.text if element.tag == _CREATOR_TOOL else element.get(_CREATOR_TOOL)
            creator_tool = tool.strip()[:200] if tool and tool.strip() else None
    return source_type, creator_tool


def _exif(block: bytes) -> tuple[str | None, str | None]:
    """EXIF Software and UserComment (its first :data:`SETTINGS_PEEK` characters)."""
    exif = Image.Exif()
    try:
        exif.load(block)
        software = exif.get(_SOFTWARE)
        comment = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception as exc:  # Pillow's TIFF parser raises what the bytes lead it to (struct, value, index errors)
        raise ProvenanceError(f"EXIF block does not parse: {type(exc).__name__}") from None
    if isinstance(comment, bytes):  # an 8-byte character code, then the text
        code, text = comment[:8], comment[8:8 + 2 * SETTINGS_PEEK]
        comment = text.decode("utf-16-be" if code.startswith(b"UNICODE") and text[:1] == b"\x00" else
                              "utf-16-le" if code.startswith(b"UNICODE") else "latin-1", "replace")
    software = software.strip("\x00 ")[:200] if isinstance(software, str) else None
    return software or None, comment[:SETTINGS_PEEK] if isinstance(comment, str) else None


def _settings(texts: dict[str, str], comment: str | None) -> tuple[str | None, str | None]:
    """The key holding a generator's settings and the generator it names (None, None: none found)."""
    parameters = texts.get("parameters", "")[:SETTINGS_PEEK]
    if "Steps: " in parameters:
        return "parameters", _webui(parameters)
    for key in ("prompt", "workflow"):
        if texts.get(key, "").lstrip()[:1] == "{":
            return key, "ComfyUI"
    if comment and "Steps: " in comment:
        return "UserComment", _webui(comment)
    return None, None


def _webui(text: str) -> str:
    model = _MODEL.search(text)
    return "Stable Diffusion web UI" + (f" ({model.group(1).strip()})" if model else "")
