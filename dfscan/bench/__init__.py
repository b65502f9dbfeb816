"""The benchmark harness: ``dfscan bench`` and the scripts in ``tests/bench/`` measure through these names.

``records`` holds what a run measures and reports, ``stages`` one function per
stage of the scan (reading, decoding, inference, writing, the whole scan),
``run`` the side-by-side run of ``dfscan bench``, ``report`` its table.
Speeds are printed, never asserted.
"""

from dfscan.bench.records import (
    CALIBRATION_IMAGES,
    DEFAULT_LIMIT,
    INFER_VARIANTS,
    BenchError,
    BenchOptions,
    BenchReport,
    InferVariant,
    Row,
)
from dfscan.bench.report import format_report
from dfscan.bench.run import run_bench
from dfscan.bench.stages import (
    BenchDatabase,
    Timing,
    describe_machine,
    measure_decode,
    measure_infer,
    measure_read,
    measure_scan,
    measure_write,
    peak_rss_mib,
    rss_mib,
    timed,
    write_synthetic,
)

__all__ = [
    "CALIBRATION_IMAGES",
    "DEFAULT_LIMIT",
    "INFER_VARIANTS",
    "BenchDatabase",
    "BenchError",
    "BenchOptions",
    "BenchReport",
    "InferVariant",
    "Row",
    "Timing",
    "describe_machine",
    "format_report",
    "measure_decode",
    "measure_infer",
    "measure_read",
    "measure_scan",
    "measure_write",
    "peak_rss_mib",
    "rss_mib",
    "run_bench",
    "timed",
    "write_synthetic",
]
