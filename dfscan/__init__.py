"""dfscan: batch deepfake scanning from storage to SQL.

The packages follow an image's path: ``scanner`` walks storage and makes
chunks of paths, ``workers`` reads, decodes, scores and writes them, ``trt``
holds the inference runtimes, ``db`` the SQL schema, ``detector`` the model.
Above them here: the entry points (``cli``, ``commands``, ``serve``, ``bench``,
the report, the extension builder); below them all: ``core`` (settings, the
GPU probe, masking of secrets, constants, registries, error text).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
