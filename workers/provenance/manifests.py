"""C2PA manifests (Content Credentials) with c2pa-python: present or not, validation state, failure codes,
signer, claim generator and the actions' digital source types.

**A remote manifest is never fetched**: every Reader gets a context whose settings turn
``verify.remote_manifest_fetch`` (and OCSP fetching) off; a file that points to one raises the
library's "must fetch remote manifests" error, which is recorded as ``remote``.  Trust anchors
(``--c2pa-trust-anchors``, PEM) make a signer that chains to them ``trusted``; without them no
signer is trusted and a sound manifest is ``valid``.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from typing import IO, Any

import c2pa

from dfscan.workers.provenance.declarations import SYNTHETIC_SOURCE_TYPES, source_type_term
from dfscan.workers.provenance.errors import ProvenanceError

__all__ = ["Manifest", "ManifestReader"]

_STATES = {"Valid": "valid", "Invalid": "invalid", "Trusted": "trusted"}


@dataclass(frozen=True)
class Manifest:
    c2pa: str  # 'none', 'embedded' or 'remote'
    state: str | None = None
    codes: str | None = None
    signer: str | None = None
    issuer: str | None = None
    claim_generator: str | None = None
    source_type: str | None = None


class ManifestReader:
    """Reads manifests with one c2pa context (made at first use; the library's settings are per context)."""

    def __init__(self, trust_anchors_pem: str | None = None) -> None:
        self.trust_anchors_pem = trust_anchors_pem
        self._context: Any = None
        self._lock = threading.Lock()

    def context(self) -> Any:
        with self._lock:
            if self._context is None:
                config: dict[str, Any] = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
                if self.trust_anchors_pem:
                    config["trust"] = {"trust_anchors": self.trust_anchors_pem}
                self._context = c2pa.Context(c2pa.Settings.from_dict(config))
            return self._context

    def read(self, mime: str | None, source: bytes | IO[bytes]) -> Manifest:
        """The manifest of a file's bytes (or a stream of them); raises :class:`ProvenanceError`."""
        if mime is None:
            return Manifest("none")
        stream = io.BytesIO(source) if isinstance(source, bytes) else source
        try:
            reader = c2pa.Reader(mime, stream, context=self.context())
            try:
                store = json.loads(reader.json())
                state = reader.get_validation_state()
            finally:
                reader.close()
        except c2pa.C2paError.ManifestNotFound:
            return Manifest("none")
        except c2pa.C2paError.NotSupported:
            return Manifest("none")
        except c2pa.C2paError as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, c2pa.C2paError.RemoteManifest) or "must fetch remote manifests" in text:
                return Manifest("remote")
            raise ProvenanceError(f"C2PA: {text[:300]}") from None
        return _manifest(store, state)


def _manifest(store: dict[str, Any], state: str | None) -> Manifest:
    active = store.get("manifests", {}).get(store.get("active_manifest") or "", {})
    failures = (store.get("validation_results", {}).get("activeManifest", {}).get("failure", [])
                + store.get("validation_status", []))
    codes = ",".join(dict.fromkeys(str(f.get("code")) for f in failures if f.get("code")))
    signature = active.get("signature_info") or {}
    return Manifest("embedded", _STATES.get(state or "", "invalid" if failures else None), codes or None,
                    _text(signature.get("common_name")), _text(signature.get("issuer")),
                    _claim_generator(active), _source_type(active))


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("claim_generator_info") or []
    if info and isinstance(info[0], dict) and info[0].get("name"):
        first = info[0]
        return _text(f"{first['name']} {first.get('version', '')}".strip())
    return _text(manifest.get("claim_generator"))


def _source_type(manifest: dict[str, Any]) -> str | None:
    """The actions' digital source type: a synthetic one where any action declares one, else the first."""
    terms = [source_type_term(action.get("digitalSourceType"))
             for assertion in manifest.get("assertions", []) if str(assertion.get("label", "")).startswith("c2pa.actions")
             for action in (assertion.get("data") or {}).get("actions", []) if isinstance(action, dict)]
    terms = [t for t in terms if t]
    return next((t for t in terms if t in SYNTHETIC_SOURCE_TYPES), terms[0] if terms else None)


def _text(value: Any) -> str | None:
    return str(value)[:200] if value else None
