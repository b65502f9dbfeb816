"""What a Grad-CAM heatmap costs against a plain forward pass, per image, measured in one run.

    python tests/bench/bench_explain.py [--backbone resnext50_32x4d] [--batch 16] [--repeats 3] [--device cpu]

Times, on the same random batch of 224x224 images and the same (random-weight)
detector in eval mode:

* ``forward``: ``torch.no_grad()`` forward pass;
* ``gradcam``: ``dfscan.detector._cam.GradCam`` as ``dfscan explain`` runs it
  (Captum LayerGradCam on the last backbone block, all else frozen);
* ``full-backward``: forward and ``backward()`` of the fake logit with every
  parameter requiring gradients: what a hand-written Grad-CAM with hooks and
  ``loss.backward()`` on an unfrozen model costs (gradients for all weights).

The three run interleaved, ``--repeats`` rounds after a warm-up, and the best
round of each counts: on a shared machine that is the least disturbed one.
Prints milliseconds per image and the ratios. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _best_interleaved(fns: dict, repeats: int) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnext50_32x4d")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from dfscan.detector._cam import GradCam
    from dfscan.detector.model import DeepfakeDetector

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    model = DeepfakeDetector(args.backbone).to(device).eval()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def forward() -> None:
        with torch.no_grad():
            model(x)
        sync()

    import copy

    cam = GradCam(copy.deepcopy(model), device=device)
    unfrozen = copy.deepcopy(model)

    def gradcam() -> None:
        cam(x)
        sync()

    def full_backward() -> None:
        unfrozen.zero_grad(set_to_none=True)
        with torch.backends.cudnn.flags(enabled=not device.startswith("cuda")):
            unfrozen(x)[:, 1].sum().backward()
        sync()

    best = _best_interleaved({"forward": forward, "gradcam": gradcam, "full-backward": full_backward}, args.repeats)
    per = {k: 1000 * v / args.batch for k, v in best.items()}
    record = {
        "backbone": args.backbone, "device": device, "batch": args.batch, "threads": torch.get_num_threads(),
        "ms_per_image": per, "gradcam_over_forward": per["gradcam"] / per["forward"],
        "full_backward_over_forward": per["full-backward"] / per["forward"],
    }
    if args.json:
        print(json.dumps(record, indent=2))
        return
    print(f"{args.backbone} on {device}, batch {args.batch}, {torch.get_num_threads()} threads:")
    for k, v in per.items():
        print(f"  {k:17s} {v:8.1f} ms/image  ({v / per['forward']:.2f}x forward)")


if __name__ == "__main__":
    main()
