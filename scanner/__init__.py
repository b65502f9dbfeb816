"""Walk storage and produce chunks of image paths."""

from dfscan.scanner.chunks import Chunk, chunked
from dfscan.scanner.errors import PathListError, RootNotFound, ScannerError
from dfscan.scanner.sources import ScanSource
from dfscan.scanner.walker import WalkOptions, check_roots, count_files, read_path_list, walk

__all__ = [
    "Chunk",
    "PathListError",
    "RootNotFound",
    "ScanSource",
    "ScannerError",
    "WalkOptions",
    "check_roots",
    "chunked",
    "count_files",
    "read_path_list",
    "walk",
]
