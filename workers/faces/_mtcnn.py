"""MTCNN batched across images, on torch tensors: the P-net over each pyramid scale of a whole batch in one
forward, the R- and O-net over every candidate of every image in one forward each.

The cascade, thresholds and pyramid are facenet-pytorch's ``detect_face`` (the
weights are its wheel's); what differs is how the work is laid out:

* the pyramid is an antialiased bilinear resize (on the CPU of uint8
  channels-last pixels: several times faster than facenet-pytorch's area
  resize of floats), and the R- and O-net candidates are cut by one
  ``roi_align`` call per pyramid level, each from the level that brings it
  nearest the net's input size (a box that crosses the border reads zeros
  outside, as the original MTCNN pads), where facenet-pytorch resizes each
  candidate alone (thousands of calls a batch on a photograph with texture);
* a scale is run only on the images that can still hold a 12-pixel P-net
  window there, on the part of the canvas that holds them (a batch of mixed
  sizes shares one zero-padded canvas);
* every step stays on the images' device, so the same code runs on CUDA; only
  the last few boxes of the O-net go to the host for the "Min" NMS.

The nets themselves are a :class:`MtcnnNets`: the torch modules on any device,
or the same weights exported to ONNX and run by ONNX Runtime on the CPU (two to
three times faster there than torch's kernels for these small convolutions,
with PReLU written as clips, ONNX Runtime's own PRelu took half the P-net's
time, and the input normalisation folded into the first convolution; parity
is tested).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.functional import interpolate
from torchvision.ops import batched_nms, roi_align

__all__ = ["MTCNN_NETS", "BatchedMtcnn", "Level", "MtcnnNets", "NetsSpec", "OnnxNets", "TorchNets", "pyramid"]

# P-net's window, and the stride of its output on the scaled image.
CELL = 12
STRIDE = 2


def pyramid(min_side: float, min_face: float, factor: float) -> list[float]:
    """facenet-pytorch's scales: the first brings a ``min_face`` face to the P-net's 12 pixels, each next one
    ``factor`` smaller, while the image's shorter side (``min_side``) still holds one 12-pixel window."""
    m = CELL / min_face
    scales = []
    side = min_side * m
    scale = m
    while side >= CELL:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


class MtcnnNets:
    """``pnet(x) -> (reg, face)``, ``rnet(x) -> (reg, face)``, ``onet(x) -> (reg, face)``.

    ``x``: (N, 3, H, W) float32 RGB 0..255 (each net normalises as MTCNN was
    trained, (x - 127.5) / 128).  The answers, on the input's device: the box
    offsets and the probability of a face (facenet-pytorch's softmax's second
    channel; (N, H', W') for the P-net, (N,) for the others).
    """

    name = "none"

    def pnet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def rnet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def onet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


class TorchNets(MtcnnNets):
    """facenet-pytorch's modules, on the device they were moved to (CUDA: part of the device-resident path)."""

    name = "torch"

    def __init__(self, mtcnn: Any) -> None:
        self._p, self._r, self._o = mtcnn.pnet.eval(), mtcnn.rnet.eval(), mtcnn.onet.eval()

    def pnet(self, x):
        reg, prob = self._p(_normalise(x))
        return reg, prob[:, 1]

    def rnet(self, x):
        reg, prob = self._r(_normalise(x))
        return reg, prob[:, 1]

    def onet(self, x):
        reg, _points, prob = self._o(_normalise(x))
        return reg, prob[:, 1]


class OnnxNets(MtcnnNets):
    """The same modules exported to ONNX in memory (once per process) and run by ONNX Runtime on the CPU.

    Each net is run on pieces of about ``PIXELS`` input pixels: what one
    piece's activations take stays in the core's cache (measured on the
    2-core development machine, one thread: the P-net image by image 1.7x,
    the R-net 32 candidates at a time 1.6x faster than the whole batch at
    once).  ``threads``: ONNX Runtime's intra-op threads (the classifier's
    runtime has the cores; see :class:`MtcnnDetector`).
    """

    name = "onnxruntime"
    PIXELS = {"pnet": 1 << 17, "rnet": 32 * 24 * 24, "onet": 8 * 48 * 48}

    def __init__(self, mtcnn: Any, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._sessions = {}
        for name, module, size in (("pnet", _PnetFace(mtcnn.pnet), 24), ("rnet", _Face(mtcnn.rnet, 1), 24),
                                   ("onet", _Face(mtcnn.onet, 2), 48)):
            graph = _export(module.eval().cpu(), size, spatial=name == "pnet")
            self._sessions[name] = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def _run(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(x) == 0:
            raise ValueError("an empty batch reached the MTCNN nets")
        array = x.detach().cpu().numpy()
        step = max(1, self.PIXELS[name] // (x.shape[2] * x.shape[3]))
        session = self._sessions[name]
        parts = [session.run(None, {"x": array[i : i + step]}) for i in range(0, len(array), step)]
        reg, face = (np.concatenate(o) if len(parts) > 1 else o[0] for o in zip(*parts))
        return torch.from_numpy(reg).to(x.device), torch.from_numpy(face).to(x.device)

    def pnet(self, x):
        return self._run("pnet", x)

    def rnet(self, x):
        return self._run("rnet", x)

    def onet(self, x):
        return self._run("onet", x)


class _ClipPRelu(torch.nn.Module):
    """``max(x, 0) + slope * min(x, 0)``: PReLU as ONNX Runtime runs it fast (its own PRelu took half the
    P-net's time, measured)."""

    def __init__(self, prelu: torch.nn.PReLU) -> None:
        super().__init__()
        self.slope = torch.nn.Parameter(prelu.weight.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slope = self.slope.view(1, -1, *([1] * (x.dim() - 2)))
        return x.clamp(min=0) + slope * x.clamp(max=0)


def _clip_prelus(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` that takes 0..255 pixels, with its PReLUs as :class:`_ClipPRelu`.

    The normalisation (x - 127.5) / 128 is folded into the first convolution's
    weights and bias (exact: MTCNN's convolutions have no padding), so it
    costs no pass over the pixels.
    """
    import copy

    module = copy.deepcopy(module)
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.PReLU):
            setattr(module, name, _ClipPRelu(child))
    conv1 = module.conv1
    assert conv1.padding == (0, 0), "folding the normalisation needs a convolution without padding"
    with torch.no_grad():
        conv1.bias += -127.5 * 0.0078125 * conv1.weight.sum(dim=(1, 2, 3))
        conv1.weight *= 0.0078125
    return module


class _Face(torch.nn.Module):
    """The R- or O-net giving (box offsets, face probability)."""

    def __init__(self, net: torch.nn.Module, prob_at: int) -> None:
        super().__init__()
        self.net = _clip_prelus(net)
        self.prob_at = prob_at

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        return out[0], out[self.prob_at][:, 1]


class _PnetFace(torch.nn.Module):
    """The P-net giving (box offsets, face probability), the 2-way softmax as one sigmoid of the logits'
    difference (the same number: a softmax over the whole map took a tenth of the P-net's time)."""

    def __init__(self, pnet: torch.nn.Module) -> None:
        super().__init__()
        self.net = _clip_prelus(pnet)
        w, b = pnet.conv4_1.weight.detach(), pnet.conv4_1.bias.detach()
        self.face = torch.nn.Conv2d(w.shape[1], 1, 1)
        self.face.weight.data = (w[1] - w[0])[None].clone()
        self.face.bias.data = (b[1] - b[0])[None].clone()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        x = n.pool1(n.prelu1(n.conv1(x)))
        x = n.prelu3(n.conv3(n.prelu2(n.conv2(x))))
        return n.conv4_2(x), torch.sigmoid(self.face(x))[:, 0]


def _export(module: torch.nn.Module, size: int, spatial: bool) -> bytes:
    """``module`` as ONNX bytes: a dynamic batch, and for the fully convolutional P-net dynamic height and width."""
    import warnings

    axes = {"x": {0: "n", 2: "h", 3: "w"} if spatial else {0: "n"}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, torch.zeros(1, 3, size, size), buffer, input_names=["x"],
                          output_names=["reg", "face"], dynamic_axes=axes, opset_version=17, dynamo=False)
    return buffer.getvalue()


@dataclass(frozen=True)
class NetsSpec:
    name: str
    description: str
    create: Callable[..., MtcnnNets]
    devices: tuple[str, ...]  # device types it runs on


MTCNN_NETS: tuple[NetsSpec, ...] = (
    NetsSpec("onnxruntime", "the wheel's weights exported to ONNX, ONNX Runtime on the CPU",
             lambda mtcnn, threads: OnnxNets(mtcnn, threads), ("cpu",)),
    NetsSpec("torch", "facenet-pytorch's modules on any torch device", lambda mtcnn, threads: TorchNets(mtcnn),
             ("cpu", "cuda")),
)


class BatchedMtcnn:
    """MTCNN on an (N, 3, H, W) RGB 0..255 batch (uint8 or float): per image a (k, 5) array of x1, y1, x2, y2,
    score.

    ``sizes`` (per image its (height, width) on the zero-padded batch; default
    the whole batch) keeps a small image's scales and candidates to itself.
    """

    def __init__(self, nets: MtcnnNets, thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709) -> None:
        self.nets = nets
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, min_face: float,
               sizes: Sequence[tuple[int, int]] | None = None) -> list[np.ndarray]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"MTCNN takes an (N, 3, H, W) batch, got shape {tuple(images.shape)}")
        n, _, h, w = images.shape
        if n == 0:
            return []
        if sizes is None:
            sizes = [(h, w)] * n
        if len(sizes) != n:
            raise ValueError(f"{len(sizes)} sizes for a batch of {n} images")
        dims = torch.tensor([[sw, sh] for sh, sw in sizes], dtype=torch.float32, device=images.device)  # w, h
        levels, boxes, owners = self._stage1(_resizable(images), min_face, sizes)
        if len(boxes):
            boxes, owners = self._refine(levels, boxes, owners, dims)
        if len(boxes):
            boxes, owners = self._output(levels, boxes, owners, dims)
        found = boxes.cpu().numpy().astype(np.float64)
        owners_np = owners.cpu().numpy()
        return [found[owners_np == i].reshape(-1, 5) for i in range(n)]

    # -- the three stages --------------------------------------------------------------------------

    def _stage1(self, images: torch.Tensor, min_face: float, sizes: Sequence[tuple[int, int]]):
        """P-net over the pyramid: per scale one forward of the images that a 12-pixel window still fits.

        Returns the pyramid too (the images themselves first), as :class:`Level`\\ s: the R- and O-net cut
        their candidates from the level nearest their input size.
        """
        n, _, h, w = images.shape
        device = images.device
        smallest = torch.tensor([min(s) for s in sizes])
        levels = [Level(1.0, images, torch.arange(n, device=device))]
        found, owners = [], []
        for scale in pyramid(max(min(s) for s in sizes), min_face, self.factor):
            keep = (smallest * scale >= CELL).nonzero().flatten()
            if len(keep) == 0:
                continue
            idx = keep.tolist()
            keep = keep.to(device)
            # The part of the canvas these images cover, at this scale (the whole canvas is resized, so
            # the sampling grid is the same whatever the batch holds).
            sh = min(int(h * scale + 1), int(max(sizes[i][0] for i in idx) * scale + 1))
            sw = min(int(w * scale + 1), int(max(sizes[i][1] for i in idx) * scale + 1))
            part = images if len(idx) == n else images[keep]
            scaled = interpolate(part, size=(int(h * scale + 1), int(w * scale + 1)), mode="bilinear",
                                 antialias=True, align_corners=False)[:, :, :sh, :sw]
            scaled = _nchw_floats(scaled)  # the P-net's input, and the crops' source
            levels.append(Level(scale, scaled, keep))
            reg, face = self.nets.pnet(scaled)
            boxes, which = _candidates(reg, face, scale, self.thresholds[0])
            if len(boxes) == 0:
                continue
            which = keep[which]
            pick = batched_nms(boxes[:, :4], boxes[:, 4], which, 0.5)
            found.append(boxes[pick])
            owners.append(which[pick])
        if not found:
            return levels, torch.zeros((0, 5), device=device), torch.zeros(0, dtype=torch.long, device=device)
        every, whose = torch.cat(found), torch.cat(owners)
        pick = batched_nms(every[:, :4], every[:, 4], whose, 0.7)
        every, whose = every[pick], whose[pick]
        wh = (every[:, 2:4] - every[:, 0:2]).repeat(1, 2)
        corners = every[:, :4] + every[:, 5:9] * wh
        return levels, _square(torch.cat([corners, every[:, 4:5]], dim=1)), whose

    def _refine(self, levels: list["Level"], boxes: torch.Tensor, owners: torch.Tensor, dims: torch.Tensor):
        """R-net on every candidate of the batch in one forward."""
        boxes, owners = _inside(boxes, owners, dims)
        if len(boxes) == 0:
            return boxes, owners
        reg, score = self.nets.rnet(_crops(levels, boxes, owners, 24))
        ok = score > self.thresholds[1]
        boxes = torch.cat([boxes[ok, :4], score[ok, None]], dim=1)
        owners, reg = owners[ok], reg[ok]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], owners, 0.7)
        return _square(_regress(boxes[pick], reg[pick])), owners[pick]

    def _output(self, levels: list["Level"], boxes: torch.Tensor, owners: torch.Tensor, dims: torch.Tensor):
        """O-net on every remaining candidate in one forward; then NMS by the smaller box ("Min"), per image."""
        from facenet_pytorch.models.utils.detect_face import batched_nms_numpy

        boxes, owners = _inside(boxes, owners, dims)
        if len(boxes) == 0:
            return boxes, owners
        reg, score = self.nets.onet(_crops(levels, boxes, owners, 48))
        ok = score > self.thresholds[2]
        boxes = _regress(torch.cat([boxes[ok, :4], score[ok, None]], dim=1), reg[ok])
        owners = owners[ok]
        if len(boxes) == 0:
            return boxes, owners
        # A few boxes per image: facenet-pytorch's own "Min" NMS (on the host), so the rule stays its.
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], owners, 0.7, "Min").to(boxes.device)
        return boxes[pick], owners[pick]


class Level:
    """One level of the pyramid: its scale, the scaled images (N', 3, H', W') and which images of the batch."""

    def __init__(self, scale: float, images: torch.Tensor, keep: torch.Tensor) -> None:
        self.scale = scale
        self.images = images
        self.keep = keep

    def cut(self, rois: torch.Tensor, size: int) -> torch.Tensor:
        """``roi_align`` of ``rois`` (index of the image in this level, x1, y1, x2, y2 at its scale) to
        ``size`` x ``size``, float.

        A level of float32 NCHW images (the pyramid) is read in one call, and
        so is one on a GPU (converted whole).  The canvas itself on the CPU
        (uint8 channels-last) is converted image by image: one image's floats
        are small enough for the allocator to reuse their memory, where
        converting the whole sub-batch at once touched fresh pages each time
        (16 640x480 images, one thread: 0.4 ms an image against 2.6).
        """
        images = self.images
        if images.dtype == torch.float32 and images.is_contiguous():
            return _roi_align(images, rois, size)
        if images.device.type != "cpu":
            return _roi_align(_nchw_floats(images), rois, size)
        out = torch.empty((len(rois), 3, size, size), dtype=torch.float32, device=rois.device)
        which = rois[:, 0].long()
        for j in which.unique().tolist():
            mine = (which == j).nonzero().flatten()
            own = rois[mine].clone()
            own[:, 0] = 0
            out[mine] = _roi_align(_nchw_floats(images[j : j + 1]), own, size)
        return out


# -- helpers on tensors ------------------------------------------------------------------------------


def _nchw_floats(x: torch.Tensor) -> torch.Tensor:
    """``x`` (uint8 or float, channels-last or not) as contiguous float32 NCHW, in one pass: ``copy_`` into
    a new tensor (``contiguous().float()`` transposes, then converts)."""
    return torch.empty(x.shape, dtype=torch.float32, device=x.device).copy_(x)


def _roi_align(images: torch.Tensor, rois: torch.Tensor, size: int) -> torch.Tensor:
    """One bilinear sample per output pixel of each box (pixel i covers [i, i + 1))."""
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=1, aligned=True)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """What the nets take: float32 NCHW, (x - 127.5) / 128."""
    return ((x.float() - 127.5) * 0.0078125).contiguous()


def _candidates(reg: torch.Tensor, prob: torch.Tensor, scale: float, threshold: float):
    """facenet-pytorch's ``generateBoundingBox``: (k, 9) boxes (x1, y1, x2, y2, score, 4 offsets), their images."""
    mask = prob >= threshold
    at = mask.nonzero()
    which = at[:, 0]
    score = prob[mask]
    offsets = reg.permute(1, 0, 2, 3)[:, mask].permute(1, 0)
    xy = at[:, 1:].to(reg.dtype).flip(1)
    q1 = ((STRIDE * xy + 1) / scale).floor()
    q2 = ((STRIDE * xy + CELL) / scale).floor()
    return torch.cat([q1, q2, score[:, None], offsets], dim=1), which


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """facenet-pytorch's ``rerec``: each box made square on its longer side, about its centre."""
    boxes = boxes.clone()
    wh = boxes[:, 2:4] - boxes[:, 0:2]
    side = wh.max(dim=1).values[:, None]
    boxes[:, 0:2] = boxes[:, 0:2] + wh * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, 0:2] + side
    return boxes


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """facenet-pytorch's ``bbreg``: the net's offsets, in units of the box's (inclusive) size."""
    boxes = boxes.clone()
    wh = (boxes[:, 2:4] - boxes[:, 0:2] + 1).repeat(1, 2)
    boxes[:, :4] = boxes[:, :4] + reg[:, :4] * wh
    return boxes


def _inside(boxes: torch.Tensor, owners: torch.Tensor, dims: torch.Tensor):
    """The boxes that overlap their own image (a box wholly in another image's padding reads only zeros)."""
    w, h = dims[owners, 0], dims[owners, 1]
    ok = (boxes[:, 2] > 1) & (boxes[:, 3] > 1) & (boxes[:, 0] < w) & (boxes[:, 1] < h)
    return boxes[ok], owners[ok]


def _resizable(images: torch.Tensor) -> torch.Tensor:
    """The batch the pyramid is made from: on the CPU uint8 channels-last (torch's vectorised antialiased resize,
    several times faster than its float one; an (N, H, W, 3) array permuted is already laid out so), elsewhere
    float."""
    if images.device.type != "cpu":
        return images.float()
    if images.dtype != torch.uint8:
        images = images.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous(memory_format=torch.channels_last)


def _crops(levels: list[Level], boxes: torch.Tensor, owners: torch.Tensor, size: int) -> torch.Tensor:
    """Each box resized to ``size`` x ``size`` (float, 0..255), zeros outside its image.

    Read from the pyramid level that brings the box nearest ``size`` from
    above: a level is already smoothed (antialiased), so one bilinear sample
    per output pixel (``roi_align``, one sample a bin, one call a level for
    all its boxes) stands for the area average that facenet-pytorch takes box
    by box.  facenet-pytorch cuts pixels
    ``trunc(x1) - 1 .. trunc(x2) - 1`` (MATLAB's 1-based convention, kept by
    its ``pad``): with pixel i covering [i, i + 1), the box
    [trunc(x1) - 1, trunc(x2)).
    """
    device = boxes.device
    corners = boxes[:, :4].trunc()
    corners[:, 0:2] -= 1
    side = (corners[:, 2:4] - corners[:, 0:2]).max(dim=1).values
    chosen = torch.zeros(len(boxes), dtype=torch.long, device=device)  # level 0: the images themselves
    member = torch.zeros(len(levels[0].keep), dtype=torch.bool, device=device)
    for k, level in enumerate(levels[1:], start=1):
        member.zero_()
        member[level.keep] = True
        chosen = torch.where((side * level.scale >= size) & member[owners], torch.full_like(chosen, k), chosen)
    out = torch.zeros((len(boxes), 3, size, size), dtype=torch.float32, device=device)
    place = torch.empty(len(levels[0].keep), dtype=torch.long, device=device)
    for k, level in enumerate(levels):
        at = (chosen == k).nonzero().flatten()
        if len(at) == 0:
            continue
        place[level.keep] = torch.arange(len(level.keep), device=device)
        rois = torch.cat([place[owners[at]][:, None].to(torch.float32), corners[at] * level.scale], dim=1)
        out[at] = level.cut(rois, size)
    return out
