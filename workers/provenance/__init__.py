"""Provenance: what a file says about its own origin, read beside the detector's verdict.

C2PA manifests (:mod:`.manifests`, never fetched from a remote address), the IPTC digital source type,
creator tool and generator settings left in the metadata (:mod:`.containers`, :mod:`.declarations`),
and invisible watermarks (:mod:`.watermarks`); :class:`ProvenanceReader` puts them in one
:class:`~dfscan.db.records.ProvenanceRow`.
"""

from dfscan.workers.provenance.declarations import IPTC_TERMS, SYNTHETIC_SOURCE_TYPES
from dfscan.workers.provenance.errors import ProvenanceError
from dfscan.workers.provenance.reader import ProvenanceReader
from dfscan.workers.provenance.watermarks import KNOWN_WATERMARKS, MAX_BER, match_watermark

__all__ = ["IPTC_TERMS", "KNOWN_WATERMARKS", "MAX_BER", "SYNTHETIC_SOURCE_TYPES", "ProvenanceError",
           "ProvenanceReader", "match_watermark"]
