"""Video sampling: T frames evenly spaced in time, upright and bounded in size (PyAV; DALI's video decoder).

Nothing here detects faces or runs the model: the scoring's video stage
turns sampled frames into sequences.
"""

from dfscan.workers.video.dali import DaliVideoSampler, FramePlan, plan_frames
from dfscan.workers.video.sample import (
    DEFAULT_MAX_SIDE,
    DEFAULT_TIME_LIMIT_S,
    VIDEO_EXTENSIONS,
    SampledVideo,
    is_video_path,
    pyav_version,
    sample_video,
)

__all__ = [
    "DEFAULT_MAX_SIDE", "DEFAULT_TIME_LIMIT_S", "VIDEO_EXTENSIONS", "DaliVideoSampler", "FramePlan",
    "SampledVideo", "is_video_path", "plan_frames", "pyav_version", "sample_video",
]
