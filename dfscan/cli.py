"""The ``dfscan`` command line: one click group; docstrings are the help.

The commands live in :mod:`dfscan.commands`, one module per family; this
module only makes the group and adds them. Library code raises its own
errors; only the commands turn them into messages and exit codes.

``dfscan --help`` lists the commands in sections, by what a user is doing
(:data:`SECTIONS`); the commands themselves are one flat group, so every
name works as it always has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import click

from dfscan import __version__
from dfscan.commands import register

# The sections of `dfscan --help`, in order: what a user is doing -> its commands, in the order shown.
# A new command is one name here; a command in no section is listed under OTHER, so nothing disappears
# (and tests/test_cli_sections.py fails until it has its section).
SECTIONS: dict[str, tuple[str, ...]] = {
    "Scanning": ("scan", "status", "results", "resume", "cancel"),
    "Analysis": ("report", "explain", "bank"),
    "Models": ("synth", "train", "evaluate", "calibrate", "export-reviews", "export", "quantize", "fp16",
               "build-engine"),
    "A fleet (Celery workers)": ("worker", "beat"),
    "The HTTP service and browser extension": ("serve", "api-key", "plugin"),
    "This machine and its database": ("doctor", "bench", "migrate", "prune"),
}
OTHER = "Other"


class SectionedGroup(click.Group):
    """A click group whose help lists its commands in named sections (``sections``: title -> names).

    Only the help changes: ``list_commands`` / ``get_command`` are click's, so names, completion and
    ``dfscan COMMAND --help`` are untouched. Commands in no section go under :data:`OTHER`, last.
    """

    def __init__(self, *args: object, sections: Mapping[str, Sequence[str]] | None = None,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sections: dict[str, tuple[str, ...]] = {title: tuple(names) for title, names in (sections or {}).items()}

    def sectioned_commands(self, ctx: click.Context) -> list[tuple[str, list[tuple[str, click.Command]]]]:
        """(title, [(name, command), ...]) per non-empty section, in order; hidden commands left out."""
        visible: dict[str, click.Command] = {}
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                visible[name] = cmd
        placed: set[str] = set()
        out: list[tuple[str, list[tuple[str, click.Command]]]] = []
        for title, names in self.sections.items():
            rows = []
            for name in names:
                if name in visible and name not in placed:  # a name listed twice shows once, in its first section
                    rows.append((name, visible[name]))
                    placed.add(name)
            if rows:
                out.append((title, rows))
        rest = [(name, cmd) for name, cmd in visible.items() if name not in placed]
        if rest:
            out.append((OTHER, rest))
        return out

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections = self.sectioned_commands(ctx)
        if not sections:
            return
        # One width for the names of every section, so the descriptions line up down the whole list.
        width = max(len(name) for _, rows in sections for name, _ in rows)
        limit = formatter.width - 6 - width
        for title, rows in sections:
            with formatter.section(title):
                formatter.write_dl([(name.ljust(width), cmd.get_short_help_str(limit)) for name, cmd in rows])


@click.group(cls=SectionedGroup, sections=SECTIONS,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100,
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
