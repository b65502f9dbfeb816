"""`dfscan --help` lists the commands in sections, by what a user is doing; every command once, none lost.

The real group (dfscan.cli.main, every command registered), its real help through click's CliRunner,
and a throwaway group of the same class for the "Other" section.
"""

from __future__ import annotations

import re

import click
from click.testing import CliRunner

from dfscan.cli import OTHER, SECTIONS, SectionedGroup, main


def help_text(*args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--help"], prog_name="dfscan", catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def listed(text: str) -> list[tuple[str, str]]:
    """(section, command) for every command line under a section heading of ``text``, in order."""
    rows: list[tuple[str, str]] = []
    section = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            section = line[:-1]
        elif section not in (None, "Options") and (m := re.match(r"^  (\S+)(\s|$)", line)):
            rows.append((section, m.group(1)))
    return rows


def visible_commands() -> set[str]:
    return {name for name, cmd in main.commands.items() if not cmd.hidden}


def test_every_command_has_a_section() -> None:
    """A new command must get its section: one entry in dfscan.cli.SECTIONS."""
    sectioned = {name for names in SECTIONS.values() for name in names}
    missing = sorted(visible_commands() - sectioned)
    assert not missing, f"commands in no section of dfscan.cli.SECTIONS (they show under {OTHER!r}): {missing}"


def test_the_table_names_only_real_commands_each_once() -> None:
    names = [name for names in SECTIONS.values() for name in names]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]
    assert set(names) <= set(main.commands), sorted(set(names) - set(main.commands))
    assert OTHER not in SECTIONS


def test_help_lists_every_command_exactly_once_in_its_section() -> None:
    rows = listed(help_text())
    names = [name for _, name in rows]
    assert sorted(names) == sorted(visible_commands())  # each exactly once, none missing, nothing extra
    where = {name: section for section, name in rows}
    for title, members in SECTIONS.items():
        for name in members:
            assert where[name] == title, (name, where[name], title)
        # Within a section, the table's order.
        assert [n for s, n in rows if s == title] == [n for n in members if n in where]


def test_sections_appear_in_the_table_order_after_the_options() -> None:
    text = help_text()
    headings = [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert headings[0] == "Options"
    assert headings[1:] == [title for title in SECTIONS if any(n in main.commands for n in SECTIONS[title])]
    assert "Commands:" not in text and f"{OTHER}:" not in text


def test_descriptions_line_up_across_sections() -> None:
    starts = {re.match(r"^  \S+\s+", line).end() for line in help_text().splitlines()
              if re.match(r"^  [a-z][\w-]*\s{2,}\S", line) and not line.lstrip().startswith("-")}
    assert len(starts) == 1, starts


def test_command_help_and_names_still_work() -> None:
    text = help_text("scan")
    assert text.startswith("Usage: dfscan scan [OPTIONS] [ROOTS]...")
    assert "--faces" in text and "DFSCAN_MODEL" in text
    for name in main.commands:
        assert CliRunner().invoke(main, [name, "--help"]).exit_code == 0, name
    assert "Usage: dfscan api-key" in help_text("api-key")
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2 and "No such command" in result.output


def test_an_unsectioned_command_shows_under_other_last() -> None:
    @click.group(cls=SectionedGroup, sections={"First": ("b", "gone")})
    def group() -> None:
        """A group."""

    for name in ("a", "b", "c"):
        group.add_command(click.Command(name, help=f"Command {name}."))
    group.add_command(click.Command("secret", hidden=True))
    text = CliRunner().invoke(group, ["--help"]).output
    assert listed(text) == [("First", "b"), (OTHER, "a"), (OTHER, "c")]
    assert "secret" not in text
    assert CliRunner().invoke(group, ["a", "--help"]).exit_code == 0
