"""Faces: named detectors, the boxes kept and their square crops, faces followed through a video's frames.

Pure detection and geometry on RGB arrays: nothing here decodes a file or runs the model.
"""

from dfscan.workers.faces.detectors import (
    DETECT_BATCH,
    FACE_DETECTORS,
    FaceDetector,
    FaceDetectorSpec,
    FaceFinder,
    MtcnnDetector,
    create_face_detector,
)
from dfscan.workers.faces.geometry import (FaceOptions, RGBImage, crop_faces, crop_square, detection_scale, image_size,
                                           select_faces)
from dfscan.workers.faces.tracks import Track, follow
from dfscan.workers.faces.crops import crop_tensors, find_faces, resize_region

__all__ = [
    "DETECT_BATCH", "FACE_DETECTORS", "FaceDetector", "FaceDetectorSpec", "FaceFinder", "FaceOptions",
    "MtcnnDetector", "RGBImage", "Track", "create_face_detector", "crop_faces", "crop_square", "detection_scale",
    "follow", "image_size", "select_faces", "crop_tensors", "find_faces", "resize_region",
]
