"""Listing and reading s3:// objects against local files, measured in one run on a local SeaweedFS.

    python tests/bench/bench_s3.py [--objects 2000] [--threads 8]

Starts ``weed mini`` on free ports of 127.0.0.1 (tests/_s3.py), uploads
``--objects`` JPEGs of 256x256 (the same bytes also written to a folder), then
measures, with the reader of the workers (``workers.reading.reader.read_head`` in a
pool of ``--threads``, as the image stage reads):

  walk          keys (or paths) per second out of ``ScanSource.paths()``
  read          objects (or files) per second, bytes in memory

Prints a table and the ratios s3 / local.  The server shares this machine's
cores with the client, so the figures are a floor for a real store's
throughput per worker, not a prediction.  Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def timed(work) -> tuple[float, object]:
    start = time.perf_counter()
    out = work()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    from dfscan.scanner import ScanSource, WalkOptions
    from dfscan.scanner.objects import object_store
    from dfscan.core.settings import DEFAULT_EXTENSIONS
    from dfscan.workers.reading.reader import read_head
    from tests._images import jpeg_bytes
    from tests._s3 import ADMIN, REGION, start_s3_server

    os.environ.update(AWS_ACCESS_KEY_ID=ADMIN[0], AWS_SECRET_ACCESS_KEY=ADMIN[1], AWS_DEFAULT_REGION=REGION,
                      AWS_EC2_METADATA_DISABLED="true")
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        server = start_s3_server(Path(tmp) / "weed")
        try:
            bucket = server.bucket("bench")
            folder = Path(tmp) / "local"
            folder.mkdir()
            client = server.client()
            payloads = [jpeg_bytes(i % 64) for i in range(args.objects)]
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: client.put_object(Bucket=bucket, Key=f"img/{i:06d}.jpg", Body=payloads[i]),
                              range(args.objects)))
            for i, data in enumerate(payloads):
                (folder / f"{i:06d}.jpg").write_bytes(data)
            store = object_store(server.endpoint)
            rows = []
            for name, root, options in (
                ("local", str(folder), WalkOptions(DEFAULT_EXTENSIONS)),
                ("s3", f"s3://{bucket}/img", WalkOptions(DEFAULT_EXTENSIONS, s3_endpoint_url=server.endpoint)),
            ):
                source = ScanSource((root,), (), options)
                walk_s, paths = timed(lambda: [str(p) for p in source.paths()])
                assert len(paths) == args.objects, (name, len(paths))
                with ThreadPoolExecutor(args.threads) as pool:
                    read_s, files = timed(lambda: list(pool.map(lambda p: read_head(p, store=store), paths)))
                assert sum(len(f.data) for f in files) == sum(map(len, payloads))
                rows.append((name, args.objects / walk_s, args.objects / read_s))
        finally:
            server.stop()
    mean_kb = sum(map(len, payloads)) / len(payloads) / 1024
    print(f"{args.objects} JPEGs of 256x256 (mean {mean_kb:.1f} KiB), {args.threads} reader threads, "
          f"{os.cpu_count()} CPUs shared with the server")
    print(f"{'':8}{'walk paths/s':>14}{'read files/s':>14}")
    for name, walk_rate, read_rate in rows:
        print(f"{name:8}{walk_rate:14.0f}{read_rate:14.0f}")
    (_, lw, lr), (_, sw, sr) = rows
    print(f"s3 / local: walk {sw / lw:.2f}, read {sr / lr:.2f}")


if __name__ == "__main__":
    main()
