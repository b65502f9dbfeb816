"""The ``dfscan`` command line: one click group; docstrings are the help.

The commands live in :mod:`dfscan.commands`, one module per family; this
module only makes the group and adds them. Library code raises its own
errors; only the commands turn them into messages and exit codes.
"""

from __future__ import annotations

import click

from dfscan import __version__
from dfscan.commands import register


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100,
                            "auto_envvar_prefix": "DFSCAN"})
@click.version_option(__version__, prog_name="dfscan")
def main() -> None:
    """dfscan: scan image archives for deepfakes; verdicts go to SQL.

    The embedded default runs everything in this process, with ONNX Runtime on
    the CPU and SQLite in ./dfscan.db. See `dfscan COMMAND --help`.
    """


register(main)

if __name__ == "__main__":  # pragma: no cover
    main()
