"""dfscan: batch deepfake scanning from storage to SQL.

The packages follow an image's path: ``scanner`` walks storage and makes
chunks of paths, ``workers`` reads, decodes, scores and writes them, ``trt``
holds the inference runtimes, ``db`` the SQL schema, ``detector`` the model.
This package holds only what ties them together: settings and the CLI.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
