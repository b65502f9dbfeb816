"""DALI's decoded image for the face stage: oriented RGB at full resolution, decoded once.

The face stage needs the decoded image, not the model-size tensor the scan's
DALI pipeline makes: faces are detected on a downscaled copy and cropped from
the full-resolution image.  This second pipeline of the same decoder stops
after ``fn.decoders.image`` (nvJPEG on the GPU, or DALI's CPU decoders), and
the images come to the host for detection and cropping.  The safety rules of
:mod:`workers.images.dali` hold: header checks first, Pillow for what DALI can't
decode like Pillow, bisection when a batch fails.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dfscan.workers.reading.dali_runs import build_or_unavailable, run_locating
from dfscan.workers.images.decode import load_rgb
from dfscan.workers.reading.errors import ImageError
from dfscan.workers.reading.reader import FileData

INPUT_NAME = "encoded"


class DaliRgb:
    """``decode(files) -> [HxWx3 uint8 | ImageError]`` with the settings of a :class:`workers.images.dali.DaliDecoder`."""

    def __init__(self, decoder) -> None:
        self.decoder = decoder
        self._pipe = None

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        d = self.decoder
        gpu = d.device == "gpu"

        @pipeline_def(batch_size=d.batch_size, num_threads=d.threads, device_id=d.device_id if gpu else None,
                      prefetch_queue_depth=1)
        def graph():
            encoded = fn.external_source(name=INPUT_NAME, dtype=types.UINT8)
            return fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                     adjust_orientation=True)

        pipe = graph()
        pipe.build()
        return pipe

    def _run(self, datas: list[np.ndarray]) -> list[np.ndarray | None]:
        def run(part: list[np.ndarray]) -> list[np.ndarray]:
            if self._pipe is None:
                self._pipe = build_or_unavailable(self._build, f"{self.decoder.device} decode-only pipeline")
            (out,) = self._pipe.run(**{INPUT_NAME: part})
            if self.decoder.device_out is not None:  # device-resident batches: torch tensors, no host copy
                return self.decoder.device_out(out)
            if self.decoder.device == "gpu":
                out = out.as_cpu()
            return [np.array(out[i]) for i in range(len(out))]

        return run_locating(run, datas, self._drop_pipe)

    def _drop_pipe(self) -> None:
        self._pipe = None  # a failed pipeline is not reused

    def decode(self, files: Sequence[FileData]) -> list[np.ndarray | ImageError]:
        d = self.decoder
        results: list[np.ndarray | ImageError | None] = [None] * len(files)
        to_dali, to_pillow = [], []
        for i, f in enumerate(files):
            header = f.header
            if header.pixels is not None and header.pixels > d.pre.max_pixels:
                results[i] = ImageError("too-many-pixels", f"too many pixels: {header.width}x{header.height} "
                                                           f"exceeds the limit of {d.pre.max_pixels}")
            elif header.dali_safe:
                to_dali.append(i)
            else:
                to_pillow.append(i)
        with d._lock:
            for start in range(0, len(to_dali), d.batch_size):
                part = to_dali[start : start + d.batch_size]
                for i, out in zip(part, self._run([np.frombuffer(files[i].data, dtype=np.uint8) for i in part])):
                    if out is None or out.ndim != 3 or out.shape[2] != 3:
                        to_pillow.append(i)
                    else:
                        results[i] = out
        for i in to_pillow:
            try:
                results[i] = np.asarray(load_rgb(files[i].data, None, d.pre.max_pixels, files[i].header,
                                                 d.pre.max_decode_bytes))
            except ImageError as exc:
                results[i] = exc
            except Exception as exc:  # noqa: BLE001 - a decoder bug is this image's error
                results[i] = ImageError("decode-failed", f"decode failed: {str(exc)[:200]}")
        return results  # type: ignore[return-value]
