"""INT8 against FP32 on a labelled synthetic set, with a detector whose outputs are not degenerate.

    python tests/bench/bench_int8.py [--backbone resnet18] [--images 600] [--steps 300] [--json FILE]

A detector with random weights gives almost the same p_fake for every image,
so any quantisation "agrees" with it.  This script makes one that doesn't:

1. writes a labelled synthetic set: ``dfscan bench``'s structured 256x256
   JPEGs, each darkened or brightened by a random gain; the label ("fake")
   is a gain above the median.  The task is easy on purpose: what matters
   here is that p_fake spreads over (0, 1) and passes through the
   threshold continuously, so that quantisation error can flip verdicts;
   70% of the images train, 30% are held out;
2. builds the detector with ``--backbone`` (random, seeded weights), computes
   its backbone features for the training split once, and trains the
   BiLSTM and classifier on them for ``--steps`` Adam steps (training the
   whole network on two CPU cores would take hours; the head is what turns
   features into a wide spread of p_fake);
3. exports it to ONNX, quantises it with ``detector.quantize.quantize_model``
   (calibrating on up to 128 training images) and compares verdicts and
   p_fake on the held-out test split (images never seen in calibration).

Prints the agreement and the FP32 p_fake spread.  Not a test: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402


def write_set(folder: Path, n: int) -> tuple[list[Path], list[int]]:
    from PIL import Image

    from dfscan.bench import write_synthetic

    files = write_synthetic(folder, n)
    gains = np.random.default_rng(1).uniform(0.35, 1.35, n)
    for path, gain in zip(files, gains):
        arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) * gain
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
    labels = [int(g > 0.85) for g in gains]
    return files, labels


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--images", type=int, default=600, help="synthetic images in all")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def train_head(model, x_train: np.ndarray, y, steps: int) -> float:
    """Train the BiLSTM and classifier on the backbone's features of ``x_train``; returns the final loss."""
    import torch

    with torch.no_grad():
        feats = torch.cat([model.backbone(torch.from_numpy(x_train[i : i + 32])) for i in range(0, len(x_train), 32)])
    feats = feats.unsqueeze(1)
    params = [*model.lstm.parameters(), *model.classifier.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    model.lstm.train()
    model.classifier.train()
    for _ in range(steps):
        idx = torch.randint(0, len(feats), (64,))
        out, _ = model.lstm(feats[idx])
        loss = torch.nn.functional.cross_entropy(model.classifier(out.mean(dim=1)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def accuracies(models: dict[str, Path], x_test: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Each ONNX model's accuracy on the held-out images at threshold 0.5."""
    from dfscan.trt.base import softmax
    from dfscan.trt.model_info import inspect_model
    from dfscan.trt.onnxruntime import OnnxRuntime

    acc = {}
    for name, path in models.items():
        rt = OnnxRuntime(inspect_model(path))
        p = np.concatenate([softmax(rt.infer(x_test[i : i + 64]))[:, 1] for i in range(0, len(x_test), 64)])
        rt.close()
        acc[name] = float(np.mean((p >= 0.5) == y_test))
    return acc


def main() -> None:
    args = parse_args()

    import torch

    from dfscan.detector.export import export_onnx
    from dfscan.detector.model import DeepfakeDetector, save_checkpoint
    from dfscan.detector.quantize import quantize_model
    from dfscan.detector.calibration import calibration_images

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dfscan-int8-") as tmp:
        root = Path(tmp)
        files, labels = write_set(root / "data", args.images)
        cut = int(0.7 * len(files))
        train_files, train_labels = files[:cut], labels[:cut]
        test_files, test_labels = files[cut:], labels[cut:]

        torch.manual_seed(0)
        model = DeepfakeDetector(args.backbone).eval()
        cfg = model.config
        info = SimpleNamespace(input_size=cfg.input_size, mean=cfg.mean, std=cfg.std)  # all decoding needs
        decoded = calibration_images(train_files, info)
        x_train, used = decoded.tensors, decoded.files
        y = torch.tensor([train_labels[train_files.index(p)] for p in used])
        final_loss = train_head(model, x_train, y, args.steps)
        ckpt = save_checkpoint(root / "ckpt" / "trained.pt", model, {"purpose": "int8 agreement, head trained"})
        fp32 = export_onnx(ckpt, root / "fp32").onnx_path

        rng = np.random.default_rng(0)
        calib = [train_files[i] for i in rng.permutation(len(train_files))[: args.calibration]]
        result = quantize_model(fp32, calib, root / "int8" / "model_int8.onnx", check=test_files)
        a = result.agreement
        # Accuracy of both on the held-out images, for context (the task is brightness, not deepfakes).
        decoded = calibration_images(test_files, info)
        x_test, used_test = decoded.tensors, decoded.files
        y_test = np.array([test_labels[test_files.index(p)] for p in used_test])
        acc = accuracies({"fp32": fp32, "int8": result.onnx_path}, x_test, y_test)

    figures = {
        "backbone": args.backbone,
        "synthetic_images": args.images,
        "train_images": len(train_files),
        "test_images": len(test_files),
        "head_steps": args.steps,
        "final_loss": round(final_loss, 4),
        "calibration_images": result.calibration_images,
        "quantized_nodes": result.quantized_nodes,
        "agreement_on_test": asdict(a),
        "test_accuracy": acc,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"{args.backbone}: head trained {args.steps} steps (loss {final_loss:.3f}); "
          f"calibrated on {result.calibration_images} train images; compared on {a.images} test images")
    print(f"identical verdicts: {a.identical_verdicts}/{a.images} = {a.identical_share:.2%}")
    print(f"largest |p_fake difference| {a.max_abs_dp_fake:.4f}, mean {a.mean_abs_dp_fake:.4f}")
    print(f"FP32 p_fake {a.fp32_p_fake_min:.4f}..{a.fp32_p_fake_max:.4f}, std {a.fp32_p_fake_std:.3f}; "
          f"judged fake: FP32 {a.fp32_fake_share:.1%}, INT8 {a.int8_fake_share:.1%}")
    print(f"test accuracy (brightness task): FP32 {acc['fp32']:.1%}, INT8 {acc['int8']:.1%}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
