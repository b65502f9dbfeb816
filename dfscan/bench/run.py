"""``dfscan bench``: every stage of the scan and the whole scan, measured side by side on this machine.

One run, one set of images, one model.  Rows:

* ``read``: file reading with the scanner's reader (page cache warm, and dropped before each pass);
* ``decode``: decode + resize + normalise, one row per decoder in :data:`workers.images.decoders.DECODERS`;
* ``infer``: one row per runtime in :data:`trt.registry.RUNTIMES` and precision in :data:`INFER_VARIANTS`,
  at the scan's batch size (ONNX Runtime INT8 uses a model quantised on the fly from these images
  unless one is given);
* ``write``: result rows to SQLite, and to PostgreSQL when a URL is given;
* ``scan``: the real in-process scan (walk, read, decode, infer, write) of the same images;
* ``scan`` with ``--dedupe N``: N distinct files, and N files of which half are byte copies of the
  other half (:mod:`dfscan.bench.dedupe`);
* ``naive``: the original project's usage example run over the same images (Pillow and torchvision
  one image at a time, the eager PyTorch model in batches, one commit per row).

Variants that can't run here are rows with status ``skipped`` and the reason, so
a report always says what was not measured.  The report adds the ratio of the
scan to its slowest stage (how close the pipeline comes to its bound), the scan
against the naive loop, and peak memory (RSS) per row and for the whole run.
Speeds are never asserted anywhere: this prints them.
"""

from __future__ import annotations

import inspect
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from dfscan.bench import stages
from dfscan.core.errors import first_line
from dfscan.bench.records import (
    CALIBRATION_IMAGES,
    INFER_VARIANTS,
    BenchError,
    BenchOptions,
    BenchReport,
    InferVariant,
    Row,
)

__all__ = ["run_bench"]

def run_bench(options: BenchOptions, *, progress: Callable[[str], None] | None = None) -> BenchReport:
    """Measure every stage that can run here; see the module docstring."""
    say = progress or (lambda _msg: None)
    if (options.images is None) == (options.synthetic is None):
        raise BenchError("give either --images DIR or --synthetic N")
    if options.synthetic is not None and options.synthetic < 1:
        raise BenchError(f"--synthetic must be at least 1, got {options.synthetic}")
    if options.batch_size < 1:
        raise BenchError(f"batch size must be at least 1, got {options.batch_size}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dfscan-bench-", dir=options.workdir) as tmp:
        return _Bench(options, Path(tmp), say).run(started)


class _Bench:
    def __init__(self, options: BenchOptions, work: Path, say: Callable[[str], None]) -> None:
        self.o = options
        self.work = work
        self.say = say

    def run(self, started: float) -> BenchReport:
        from dfscan.trt.model_info import inspect_model
        from dfscan.workers.images.decode import Preprocess

        o = self.o
        folder, paths, source = self._images()
        fp32_info, int8_info = self._models(inspect_model)
        info = fp32_info or int8_info
        pre = Preprocess(size=info.input_size, mean=info.mean, std=info.std)
        report = BenchReport(
            machine=stages.describe_machine(),
            command=" ".join(shlex.quote(a) for a in sys.argv),
            images={"count": len(paths), "source": source, "bytes": sum(os.path.getsize(p) for p in paths)},
            model={"path": os.fspath(info.path), "sha256": info.sha256, "architecture": info.architecture,
                   "precision": str(info.extra.get("precision", "fp32")), "backbone": info.extra.get("backbone")},
            batch_size=o.batch_size,
        )  # fmt: skip
        rows = report.rows

        self.say("reading")
        rows.append(self._row("read", "cached", lambda: stages.measure_read(paths, o.read_threads, o.min_seconds,
                                                                             uncached=False)))  # fmt: skip
        rows.append(self._row("read", "uncached", lambda: stages.measure_read(paths, o.read_threads, o.min_seconds,
                                                                               uncached=True)))  # fmt: skip
        files = [f for f in stages.read_all(paths, o.read_threads) if not isinstance(f, Exception)]
        if not files:
            raise BenchError(f"none of the {len(paths)} images could be read")

        rows.extend(self._decode_rows(pre, files))
        rows.extend(self._large_jpeg_rows(pre, report))
        tensors = self._tensors(pre, files)

        if int8_info is None and fp32_info is not None:
            int8_info, report.int8 = self._quantize(fp32_info, tensors)
        elif int8_info is not None:
            report.int8 = {"model": os.fspath(int8_info.path), "quantized_here": False,
                           "agreement": int8_info.extra.get("agreement")}  # fmt: skip
        models = {"fp32": fp32_info, "int8": int8_info}
        infer_rows = self._infer_rows(models, tensors, report.int8)
        rows.extend(infer_rows)
        rows.extend(self._hash_rows(pre, tensors, infer_rows))
        rows.append(self._provenance_row(paths, infer_rows))

        rows.extend(self._write_rows(info, paths))

        scan_row = self._scan_row(info, folder)
        rows.append(scan_row)
        if scan_row.status == "ok":
            self._remeasure(report, scan_row, models, tensors)

        if o.faces:
            from dfscan.bench.faces import face_rows

            face, ratio = face_rows(o, info, self.work, self.say, self._scan_settings)
            rows.extend(face)
            report.faces = ratio
        if o.videos:
            from dfscan.bench.video import video_rows

            video, figures = video_rows(o, info, self.work, self.say, self._scan_settings)
            rows.extend(video)
            report.videos = figures
        if o.dedupe:
            from dfscan.bench.dedupe import dedupe_rows

            dedupe, report.dedupe = dedupe_rows(o.dedupe, self.work, self.say,
                                                lambda db_name: self._scan_settings(info, db_name))
            rows.extend(dedupe)
        rows.append(self._naive_row(info, paths))
        self._ratios(report, scan_row)
        # A row's peak is at least the RSS read as it began, which the kernel's lazy high-water mark can trail.
        report.peak_rss_mib = max([stages.process_peak_rss_mib(), *(r.peak_rss_mib for r in rows)])
        report.seconds = time.perf_counter() - started
        return report

    def _hash_rows(self, pre, tensors: np.ndarray, infer_rows: list[Row]) -> list[Row]:
        from dfscan.bench.hashes import bank_row, pdq_row

        self.say("hashing (PDQ)")
        infer = next((r for r in infer_rows if r.status == "ok" and r.variant == "onnxruntime fp32"), None)
        rows = [self._guarded("hash", "pdq", lambda: pdq_row(tensors, pre, self.o.min_seconds, infer))]
        if self.o.bank:
            self.say(f"matching against a bank of {self.o.bank:,} hashes")
            rows.append(self._guarded("match", f"bank of {self.o.bank:,}", lambda: bank_row(self.o.bank)))
        return rows

    def _provenance_row(self, paths: list[str], infer_rows: list[Row]) -> Row:
        from dfscan.bench.provenance import VARIANT, provenance_row

        self.say("provenance (C2PA, XMP, generator settings, watermark)")
        infer = next((r for r in infer_rows if r.status == "ok" and r.variant == "onnxruntime fp32"), None)
        return self._guarded("provenance", VARIANT, lambda: provenance_row(paths, self.o.min_seconds, infer))

    @staticmethod
    def _guarded(stage: str, variant: str, make: Callable[[], Row]) -> Row:
        try:
            return make()
        except Exception as exc:  # noqa: BLE001 - one broken variant is a row, not the end of the report
            return Row(stage, variant, "failed", reason=_reason(exc))

    # --- inputs -------------------------------------------------------------------------------------------------

    def _images(self) -> tuple[Path, list[str], str]:
        o = self.o
        if o.synthetic is not None:
            folder = self.work / "images"
            self.say(f"writing {o.synthetic} synthetic images")
            paths = [str(p) for p in stages.write_synthetic(folder, o.synthetic)]
            return folder, paths, f"synthetic: {o.synthetic} JPEGs of 256x256, quality 90"
        from dfscan.core.settings import DEFAULT_EXTENSIONS
        from dfscan.scanner import WalkOptions, walk

        root = Path(o.images)
        if not root.is_dir():
            raise BenchError(f"--images {root}: not a directory")
        paths = []
        for path in walk([root], WalkOptions(DEFAULT_EXTENSIONS)):
            paths.append(path)
            if len(paths) >= o.limit:
                break
        if not paths:
            raise BenchError(f"no image files under {root}")
        # The scan walks a folder: give it exactly these files, linked into one.
        folder = self.work / "images"
        folder.mkdir()
        for i, path in enumerate(paths):
            link = folder / f"{i:06d}_{Path(path).name}"
            os.symlink(os.path.abspath(path), link)
        return folder, [str(folder / name) for name in sorted(os.listdir(folder))], f"{root} ({len(paths)} files)"

    def _models(self, inspect_model):
        o = self.o
        if o.model is None:
            self.say(f"exporting a {o.backbone} detector with random weights")
            from dfscan.detector.export import export_untrained

            path = export_untrained(o.backbone, self.work / "model")
        else:
            path = o.model
        given = inspect_model(path)
        int8 = inspect_model(o.int8_model) if o.int8_model is not None else None
        if str(given.extra.get("precision", "fp32")) == "int8":
            if int8 is not None:
                raise BenchError("--model is already INT8; give the FP32 model with --model and the INT8 one with --int8-model")
            return None, given
        return given, int8

    def _tensors(self, pre, files) -> np.ndarray:
        from dfscan.workers.images.decode import PillowDecoder

        decoder = PillowDecoder(pre, threads=self.o.decode_threads)
        try:
            out = [t for t in decoder.decode_batch(files) if isinstance(t, np.ndarray)]
        finally:
            decoder.close()
        if not out:
            raise BenchError("none of the images could be decoded")
        return np.stack(out)

    # --- rows ---------------------------------------------------------------------------------------------------

    def _row(self, stage: str, variant: str, measure: Callable[[], stages.Timing], **details: Any) -> Row:
        try:
            t = measure()
        except Exception as exc:  # noqa: BLE001 - one broken variant is a row, not the end of the report
            return Row(stage, variant, "failed", reason=_reason(exc), details=details)
        return Row(stage, variant, "ok", t.images, t.seconds, t.images_per_s, t.peak_rss_mib, t.start_rss_mib,
                   t.repeats, details=details)  # fmt: skip

    def _decode_rows(self, pre, files) -> list[Row]:
        from dfscan.workers.images.decoders import DECODERS

        rows = []
        for name, spec in DECODERS.items():
            ok, why = spec.available()
            if not ok:
                rows.append(Row("decode", name, "skipped", reason=why or "not available here"))
                continue
            self.say(f"decoding with {name}")
            try:
                decoder = spec.create(pre, threads=self.o.decode_threads, batch_size=self.o.batch_size)
            except Exception as exc:  # noqa: BLE001
                rows.append(Row("decode", name, "failed", reason=_reason(exc)))
                continue
            try:
                rows.append(self._row("decode", name, lambda: stages.measure_decode(
                    decoder, files, self.o.batch_size, self.o.min_seconds),
                    version=getattr(decoder, "version", None), device=getattr(decoder, "device", None)))  # fmt: skip
            finally:
                close = getattr(decoder, "close", None)
                if close is not None:
                    close()
        return rows

    def _large_jpeg_rows(self, pre, report: BenchReport) -> list[Row]:
        """What decoding large photos in full costs: both decoders now feed the model the full decode.

        Pillow's draft mode (1/2..1/8 scale inside libjpeg) was faster but gave
        the model a different image from DALI's (up to 6 grey levels); the row
        pair and their ratio show the price of agreeing.
        """
        from dfscan.workers.reading.reader import read_file

        self.say("decoding large JPEGs (full vs draft)")
        paths = stages.write_synthetic(self.work / "large", 8, size=stages.LARGE_JPEG_SIZE)
        datas = [read_file(os.fspath(p)).data for p in paths]
        size = "x".join(map(str, stages.LARGE_JPEG_SIZE))
        rows = [self._row("decode-large", f"pillow {mode}", lambda d=draft: stages.measure_large_decode(
                    datas, pre, draft=d, min_seconds=self.o.min_seconds), size=size, draft=draft)
                for mode, draft in (("full", False), ("draft", True))]  # fmt: skip
        full, draft = rows
        if full.status == draft.status == "ok" and full.images_per_s > 0:
            report.large_jpeg_full_over_draft = draft.images_per_s / full.images_per_s
        return rows

    def _quantize(self, fp32_info, tensors) -> tuple[Any, dict[str, Any]]:
        from dfscan.detector.quantize import quantize_model

        n = min(len(tensors), CALIBRATION_IMAGES)
        self.say(f"quantising to INT8 (calibrating on {n} images)")
        start = time.perf_counter()
        try:
            result = quantize_model(fp32_info.path, tensors[:n], self.work / "int8" / "model_int8.onnx")
        except Exception as exc:  # noqa: BLE001 - the INT8 rows then say why they are missing
            return None, {"quantized_here": True, "error": _reason(exc)}
        from dfscan.trt.model_info import inspect_model

        return inspect_model(result.onnx_path), {
            "quantized_here": True,
            "calibration_images": n,
            "seconds": round(time.perf_counter() - start, 2),
            "quantized_nodes": result.quantized_nodes,
            "agreement": asdict(result.agreement),
        }

    def _infer_rows(self, models: dict[str, Any], tensors: np.ndarray, int8: dict[str, Any] | None) -> list[Row]:
        from dfscan.trt.registry import RUNTIMES

        rows = []
        for name, spec in RUNTIMES.items():
            variants = [v for v in INFER_VARIANTS if v.runtime == name] or [InferVariant(name, "default", "fp32")]
            ok, why = spec.available()
            for variant in variants:
                label = f"{name} {variant.precision}"
                if not ok:
                    rows.append(Row("infer", label, "skipped", reason=why or "not available here"))
                    continue
                info = models.get(variant.model)
                if info is None:
                    reason = (f"no {variant.model.upper()} model"
                              + (f" (quantisation failed: {int8['error']})" if int8 and "error" in int8 else ""))
                    rows.append(Row("infer", label, "skipped", reason=reason))
                    continue
                rows.append(self._infer_row(spec, variant, label, info, tensors))
        return rows

    def _infer_row(self, spec, variant: InferVariant, label: str, info, tensors: np.ndarray) -> Row:
        options = dict(variant.options)
        accepted = _accepted_options(spec.load, options)
        if accepted is None:
            missing = ", ".join(sorted(options))
            return Row("infer", label, "skipped", reason=f"{spec.name}'s loader takes no {missing} option")
        self.say(f"inference with {label}")
        try:
            runtime = spec.load(info, **accepted)
        except Exception as exc:  # noqa: BLE001 - e.g. an INT8 engine without calibration: the row says why
            return Row("infer", label, "skipped", reason=_reason(exc))
        try:
            details = {"model": os.fspath(info.path), "runtime_version": getattr(runtime, "version", None),
                       "reported_precision": getattr(runtime, "precision", None),
                       "device": getattr(runtime, "device", None)}  # fmt: skip
            return self._row("infer", label, lambda: stages.measure_infer(
                runtime, tensors, self.o.batch_size, self.o.min_seconds), **details)
        finally:
            runtime.close()

    def _write_rows(self, info, paths: list[str]) -> list[Row]:
        rows = []
        data = stages.fake_rows(paths)
        targets = [("sqlite", f"sqlite:///{self.work / 'write.db'}")]
        if self.o.pg_url:
            targets.append(("postgresql", self.o.pg_url))
        for name, url in targets:
            self.say(f"writing rows to {name}")
            try:
                database = stages.BenchDatabase.open(url, model_sha256=info.sha256, model_name=info.architecture,
                                                     model_path=os.fspath(info.path), name="dfscan bench (write)")
            except Exception as exc:  # noqa: BLE001
                rows.append(Row("write", name, "failed", reason=_reason(exc)))
                continue
            try:
                rows.append(self._row("write", name, lambda: stages.measure_write(
                    database, data, self.o.batch_size, self.o.min_seconds)))  # fmt: skip
            finally:
                database.close(drop_scan=True)
        if not self.o.pg_url:
            rows.append(Row("write", "postgresql", "skipped", reason="no --pg URL given"))
        return rows

    def _scan_settings(self, info, db_name: str, faces: str = "auto", frames: int | None = None):
        from dfscan.core.settings import Settings

        return Settings(db_url=f"sqlite:///{self.work / db_name}", model=info.path, batch_size=self.o.batch_size,
                        read_threads=self.o.read_threads, decode_threads=self.o.decode_threads,
                        faces=faces, frames=frames)  # fmt: skip

    def _scan_row(self, info, folder: Path) -> Row:
        self.say("end-to-end scan")
        try:
            run = stages.measure_scan(self._scan_settings(info, "scan.db"), folder)
        except Exception as exc:  # noqa: BLE001
            return Row("scan", "end-to-end", "failed", reason=_reason(exc))
        audit, summary = run.audit, run.summary
        t = run.timing
        details = {"runtime": audit.get("runtime"), "precision": audit.get("precision"),
                   "decoder": audit.get("decoder"), "device": audit.get("device"), "ok": summary.ok,
                   "errors": summary.errors, "database": "sqlite"}  # fmt: skip
        return Row("scan", "end-to-end", "ok", t.images, t.seconds, t.images_per_s, t.peak_rss_mib, t.start_rss_mib,
                   1, details=details)  # fmt: skip

    def _remeasure(self, report: BenchReport, scan_row: Row, models, tensors) -> None:
        """Measure the scan's own inference variant again: drift on a shared machine shows as a gap."""
        from dfscan.trt.registry import RUNTIMES

        runtime, precision = scan_row.details.get("runtime"), scan_row.details.get("precision")
        label = f"{runtime} {precision}"
        row = report.row("infer", label)
        variant = next((v for v in INFER_VARIANTS if v.runtime == runtime and v.precision == precision), None)
        if row is None or row.status != "ok" or variant is None or runtime not in RUNTIMES:
            return
        again = self._infer_row(RUNTIMES[runtime], variant, label, models[variant.model], tensors)
        if again.status != "ok":
            return
        before, after = row.images_per_s, again.images_per_s
        details = {**row.details, "images_per_s_before_scan": round(before, 3),
                   "images_per_s_after_scan": round(after, 3)}  # fmt: skip
        merged = replace(row, images=row.images + again.images, seconds=row.seconds + again.seconds,
                         images_per_s=(row.images + again.images) / (row.seconds + again.seconds),
                         repeats=row.repeats + again.repeats, peak_rss_mib=max(row.peak_rss_mib, again.peak_rss_mib),
                         details=details)  # fmt: skip
        report.rows[report.rows.index(row)] = merged

    def _naive_row(self, info, paths: list[str]) -> Row:
        variant = "pillow+torchvision, eager torch, commit per row"
        if not self.o.naive:
            return Row("naive", variant, "skipped", reason="--no-naive")
        checkpoint = self.o.checkpoint
        if checkpoint is None:  # an INT8 sidecar names its FP32 source's checkpoint too
            recorded = info.extra.get("checkpoint")
            checkpoint = Path(recorded) if isinstance(recorded, str) and Path(recorded).is_file() else None
        if checkpoint is None:
            return Row("naive", variant, "skipped",
                       reason="no PyTorch checkpoint (the sidecar names none that exists); pass --checkpoint")
        self.say("naive reference loop")
        return self._row("naive", variant, lambda: stages.measure_naive(
            checkpoint, paths, f"sqlite:///{self.work / 'naive.db'}", info.sha256, self.o.batch_size, info.mean,
            info.std, info.input_size), checkpoint=os.fspath(checkpoint), database="sqlite")  # fmt: skip

    def _ratios(self, report: BenchReport, scan_row: Row) -> None:
        if scan_row.status != "ok":
            return
        d = scan_row.details
        path_rows = [report.row("read", "cached"), report.row("decode", str(d.get("decoder"))),
                     report.row("infer", f"{d.get('runtime')} {d.get('precision')}"), report.row("write", "sqlite")]
        measured = [r for r in path_rows if r is not None and r.status == "ok" and r.images_per_s > 0]
        if measured:
            slowest = min(measured, key=lambda r: r.images_per_s)
            report.slowest_stage = slowest.key
            report.end_to_end_over_slowest = scan_row.images_per_s / slowest.images_per_s
        naive = next((r for r in report.rows if r.stage == "naive"), None)
        if naive is not None and naive.status == "ok" and naive.images_per_s > 0:
            report.dfscan_over_naive = scan_row.images_per_s / naive.images_per_s


def _accepted_options(load: Callable, options: dict[str, Any]) -> dict[str, Any] | None:
    """``options`` if ``load`` takes them all (or any keyword), else None."""
    if not options:
        return {}
    try:
        params = inspect.signature(load).parameters
    except (TypeError, ValueError):
        return options
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return options
    return options if all(k in params for k in options) else None


def _reason(exc: BaseException) -> str:
    """``Type: first line`` of an error (the type alone when it says nothing), at most 300 characters."""
    name = type(exc).__name__
    return (f"{name}: {first_line(exc, None)}" if str(exc).strip() else name)[:300]
