"""The batched MTCNN (``dfscan.workers.faces._mtcnn``) against facenet-pytorch's own ``detect_face``, image by image.

Real parts: the P/R/O-net weights from facenet-pytorch's wheel, ONNX Runtime,
real photographs.  No group photograph ships offline on this machine, so the
"group" is composed from the real face photographs that do: scikit-image's
astronaut (Eileen Collins) and cameraman, matplotlib's Grace Hopper, and ten
of scikit-image's LFW faces (real photographs, 25 pixels, enlarged), pasted on
scikit-image's coffee photograph.  Where each face should be is what
facenet-pytorch finds on that photograph alone, moved to where it was pasted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")
torch = pytest.importorskip("torch")

from tests.test_faces import iou  # noqa: E402 - after the skips

HOPPER = Path(pytest.importorskip("matplotlib").get_data_path()) / "sample_data" / "grace_hopper.jpg"


def matched(expected, found) -> list[float]:
    """For each expected box, the best IoU among ``found``."""
    return [max((iou(e[:4], f[:4]) for f in found), default=0.0) for e in expected]


@pytest.fixture(scope="module")
def detectors():
    from dfscan.workers.faces import MtcnnDetector

    return {"onnxruntime": MtcnnDetector("cpu", nets="onnxruntime"), "torch": MtcnnDetector("cpu", nets="torch")}


def facenet(detector, image: np.ndarray, min_face: int = 20) -> np.ndarray:
    """facenet-pytorch's ``detect_face`` on one image alone: the path the face stage took before batching."""
    from facenet_pytorch.models.utils.detect_face import detect_face

    m = detector._mtcnn
    with torch.no_grad():
        boxes, _ = detect_face(torch.as_tensor(image.copy()), min_face, m.pnet, m.rnet, m.onet, m.thresholds,
                               m.factor, "cpu")
    return np.asarray(boxes[0], dtype=np.float64).reshape(-1, 5)


def _portraits():
    """Real face photographs as RGB arrays, each cut round its face."""
    gray = skimage_data.camera()
    faces = [("astronaut", skimage_data.astronaut()[30:200, 150:300]),
             ("cameraman", np.stack([gray] * 3, axis=-1)[90:230, 170:290]),
             ("hopper", np.asarray(Image.open(HOPPER).convert("RGB"))[80:380, 140:390])]
    for k, face in enumerate(skimage_data.lfw_subset()[:60:10]):  # the first 100 are faces
        small = Image.fromarray((face * 255).astype(np.uint8)).convert("RGB")
        faces.append((f"lfw{k}", np.asarray(small.resize((100, 100), Image.Resampling.BICUBIC))))
    return faces


@pytest.fixture(scope="module")
def group(detectors):
    """A 960x640 "group": the real portraits pasted at several sizes; and where each face must be found."""
    canvas = Image.fromarray(skimage_data.coffee()).resize((960, 640))
    rng = np.random.default_rng(3)
    expected = []
    x, y, row = 10, 10, 0
    for name, photo in _portraits():
        scale = float(rng.uniform(0.6, 1.0)) if photo.shape[0] > 120 else float(rng.uniform(0.6, 1.3))
        im = Image.fromarray(photo).resize((round(photo.shape[1] * scale), round(photo.shape[0] * scale)))
        if x + im.width > canvas.width:
            x, y, row = 10, y + row + 10, 0
        canvas.paste(im, (x, y))
        # facenet-pytorch on the photo alone, with a grey border (some context round a tight crop).
        bordered = np.full((im.height + 60, im.width + 60, 3), 128, np.uint8)
        bordered[30 : 30 + im.height, 30 : 30 + im.width] = np.asarray(im)
        alone = facenet(detectors["torch"], bordered)
        assert len(alone) == 1, (name, alone)
        expected.append((name, alone[0, :4] + np.array([x - 30, y - 30, x - 30, y - 30])))
        x, row = x + im.width + 10, max(row, im.height)
    assert y + row <= canvas.height
    return np.asarray(canvas), expected


# -- the nets ---------------------------------------------------------------------------------------


def test_onnx_nets_match_the_wheels_torch_modules(detectors) -> None:
    """The ONNX export (the normalisation folded into conv1, PReLU as clips, the P-net's softmax as a sigmoid)
    gives the torch modules' numbers."""
    onnx, torch_nets = detectors["onnxruntime"]._batched.nets, detectors["torch"]._batched.nets
    assert (onnx.name, torch_nets.name) == ("onnxruntime", "torch")
    photo = torch.from_numpy(skimage_data.astronaut()).permute(2, 0, 1)[None].float()
    x = photo[:, :, :301, :257]  # odd sizes: P-net's ceil-mode pooling
    rng = np.random.default_rng(0)
    crops24 = torch.from_numpy(rng.uniform(0, 255, (70, 3, 24, 24)).astype(np.float32))  # more than a piece of 32
    crops48 = torch.from_numpy(rng.uniform(0, 255, (17, 3, 48, 48)).astype(np.float32))
    with torch.no_grad():
        for net, inp in (("pnet", x), ("rnet", crops24), ("onet", crops48)):
            got = getattr(onnx, net)(inp)
            want = getattr(torch_nets, net)(inp)
            for g, w in zip(got, want):
                assert g.shape == w.shape, net
                assert float((g - w).abs().max()) < 1e-4, net


# -- the same faces as facenet-pytorch, image by image ----------------------------------------------


def _bench_photos(tmp_path_factory) -> list[np.ndarray]:
    from dfscan.bench.faces import write_face_images
    from dfscan.workers.faces.detectors import _downscale
    from dfscan.workers.faces.geometry import detection_scale

    paths = write_face_images(tmp_path_factory.mktemp("bench-faces"), 4)
    photos = [Image.open(p).convert("RGB") for p in paths]
    return [_downscale(p, detection_scale(*p.size, 640)) for p in photos]  # as the face stage detected them


def test_batched_path_finds_the_faces_facenet_finds_image_by_image(detectors, group, tmp_path_factory) -> None:
    """One batch of photos of one size (the bench's, 1-face), and the group: the same faces as facenet-pytorch
    found on each image alone, each found with IoU >= 0.5, for both nets."""
    photos = _bench_photos(tmp_path_factory)
    reference = [facenet(detectors["torch"], p) for p in photos]
    assert [len(r) for r in reference] == [1, 1, 1, 1]
    group_image, expected = group
    group_reference = facenet(detectors["torch"], group_image)
    assert min(matched([b for _, b in expected], group_reference)) >= 0.5  # facenet-pytorch finds every face
    for name, det in detectors.items():
        found = det.detect(np.stack(photos))
        for ref, got in zip(reference, found):
            assert len(got) == len(ref), name
            assert min(matched(ref, got)) >= 0.5, (name, ref, got)
        (got,) = det.detect(group_image[None])
        assert len(got) == len(group_reference), (name, len(got), len(group_reference))
        ious = matched([b for _, b in expected], got)
        assert min(ious) >= 0.5, (name, [(n, round(v, 2)) for (n, _), v in zip(expected, ious)])
        assert min(matched(got, group_reference)) >= 0.5, name


def test_the_stages_limits_keep_every_face_of_the_group(detectors, group) -> None:
    """The face stage's finder with its default limits (a 512-pixel canvas, faces from ``detect_min_face``
    canvas pixels) finds every face of the group with IoU >= 0.5, down to the 36-pixel cameraman (19 canvas
    pixels, under the limit: MTCNN finds faces somewhat smaller than its pyramid's first level)."""
    from dfscan.workers.faces import FaceFinder, FaceOptions, select_faces

    group_image, expected = group
    options = FaceOptions()
    assert options.detect_min_face > 20  # the limit under test is above MTCNN's own
    for name, det in detectors.items():
        (found,) = FaceFinder(det, options).detect([group_image])
        faces, _ = select_faces(found, group_image.shape[1], group_image.shape[0], options)
        ious = matched([b for _, b in expected], faces)
        assert min(ious) >= 0.5, (name, [(n, round(v, 2)) for (n, _), v in zip(expected, ious)])


def test_the_stages_limits_find_each_bench_photos_face_where_it_was_pasted(detectors, tmp_path_factory) -> None:
    """The default canvas and limit on the bench's 1155x866 photos, through the face stage's finder: one face
    each, where :func:`~dfscan.bench.faces.write_face_images` pasted it (IoU >= 0.5), for both nets."""
    from dfscan.bench.faces import face_boxes, write_face_images
    from dfscan.workers.faces import FaceFinder, FaceOptions, select_faces

    paths = write_face_images(tmp_path_factory.mktemp("bench-recall"), 32)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    options = FaceOptions()
    for name, det in detectors.items():
        found = FaceFinder(det, options).detect(photos)
        faces = [select_faces(f, 1155, 866, options)[0] for f in found]
        assert [len(f) for f in faces] == [1] * len(photos), name
        ious = [matched([box], f)[0] for box, f in zip(face_boxes(len(photos)), faces)]
        assert min(ious) >= 0.5, (name, [round(v, 2) for v in ious])


def test_detect_min_face_cuts_the_pnets_pyramid(detectors, tmp_path_factory) -> None:
    """The limit is the P-net's first pyramid level: from MTCNN's 20 to the default 28 canvas pixels the P-net
    reads about (20/28)^2 of the pixels, and the R-net fewer candidates; the bench's photos keep their face."""
    from dfscan.workers.faces import FaceFinder, FaceOptions

    det = detectors["onnxruntime"]
    nets = det._batched.nets
    photos = _bench_photos(tmp_path_factory)  # 640x480 canvases
    seen: dict[int, dict[str, int]] = {}
    found: dict[int, list] = {}
    for limit in (20, FaceOptions().detect_min_face):
        counts = seen[limit] = {"pnet": 0, "rnet": 0}
        calls = {name: getattr(nets, name) for name in counts}

        def counting(name):
            def run(x):
                counts[name] += x.shape[0] * x.shape[2] * x.shape[3] if name == "pnet" else x.shape[0]
                return calls[name](x)
            return run

        for name in counts:
            setattr(nets, name, counting(name))
        try:
            found[limit] = FaceFinder(det, FaceOptions(detect_size=640, detect_min_face=limit, min_size=1)).detect(photos)
        finally:
            for name in counts:
                delattr(nets, name)  # the class's own methods again
    default = FaceOptions().detect_min_face
    ratio = seen[default]["pnet"] / seen[20]["pnet"]
    assert 0.8 * (20 / default) ** 2 < ratio < 1.2 * (20 / default) ** 2, seen
    assert seen[default]["rnet"] < seen[20]["rnet"], seen
    for before, after in zip(found[20], found[default]):
        assert len(before) == len(after) == 1 and min(matched(before, after)) >= 0.9


def test_face_options_limits() -> None:
    """``canvas_min_face``: ``detect_min_face`` canvas pixels, or ``min_size`` at the canvas's scale where that is
    larger; a limit under the P-net's 12-pixel window is refused."""
    from dfscan.workers.faces import FaceOptions

    o = FaceOptions(detect_size=640, detect_min_face=28, min_size=24)
    assert o.canvas_min_face(640 / 1155) == 28  # a 1155-pixel photo on its 640-pixel canvas: 50 original pixels
    assert o.canvas_min_face(1.0) == 28
    assert FaceOptions(min_size=200).canvas_min_face(0.5) == 100
    with pytest.raises(ValueError, match="at least 12"):
        FaceOptions(detect_min_face=11)


def test_detect_tensors_float_uint8_and_a_padded_batch_of_mixed_sizes(detectors) -> None:
    """``detect_tensors`` on float32 and uint8 gives ``detect``'s boxes; a zero-padded batch of mixed sizes with
    ``sizes`` gives each image's own boxes, and no box outside an image."""
    det = detectors["onnxruntime"]
    astronaut = skimage_data.astronaut()
    tall = np.ascontiguousarray(np.asarray(Image.fromarray(astronaut).resize((300, 420))))
    coffee = skimage_data.coffee()  # 400x600, no face
    alone = [det.detect(im[None])[0] for im in (astronaut, tall, coffee)]
    assert [len(a) for a in alone] == [1, 1, 0]
    h, w = 512, 600
    batch = torch.zeros((3, 3, h, w), dtype=torch.float32)
    sizes = []
    for k, im in enumerate((astronaut, tall, coffee)):
        batch[k, :, : im.shape[0], : im.shape[1]] = torch.from_numpy(np.array(im)).permute(2, 0, 1).float()
        sizes.append(im.shape[:2])
    for tensor in (batch, batch.to(torch.uint8)):
        found = det.detect_tensors(tensor, sizes=sizes)
        assert [len(f) for f in found] == [1, 1, 0]
        for got, ref, (ih, iw) in zip(found, alone, sizes):
            assert all(v >= 0.5 for v in matched(ref, got))
            assert (got[:, 0] < iw).all() and (got[:, 1] < ih).all()
    # The same float tensor without sizes: the whole padded batch, as detect() on the canvas sees it.
    from_canvas = det.detect(batch.permute(0, 2, 3, 1).to(torch.uint8).numpy())
    assert [len(f) for f in det.detect_tensors(batch)] == [len(f) for f in from_canvas]


def test_nets_are_named_variants(detectors) -> None:
    from dfscan.workers.faces import MtcnnDetector
    from dfscan.workers.faces._mtcnn import MTCNN_NETS
    from dfscan.workers.reading.errors import UnknownFaceDetector

    assert [s.name for s in MTCNN_NETS] == ["onnxruntime", "torch"]
    assert detectors["onnxruntime"].nets == "onnxruntime" and MtcnnDetector("cpu").nets == "onnxruntime"
    with pytest.raises(UnknownFaceDetector, match="known: onnxruntime, torch"):
        MtcnnDetector("cpu", nets="tensorrt")
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        detectors["torch"].detect_tensors(torch.zeros(2, 4, 32, 32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_detect_tensors_on_cuda_finds_the_cpu_faces(detectors, group) -> None:
    """The same code on a CUDA tensor (torch nets on the GPU): the faces the CPU path finds."""
    from dfscan.workers.faces import MtcnnDetector

    group_image, expected = group
    cuda = MtcnnDetector("cuda")
    assert cuda.nets == "torch"
    tensor = torch.from_numpy(group_image).permute(2, 0, 1)[None].float().cuda()
    (got,) = cuda.detect_tensors(tensor)
    (ref,) = detectors["onnxruntime"].detect(group_image[None])
    assert len(got) == len(ref)
    assert min(matched([b for _, b in expected], got)) >= 0.5
