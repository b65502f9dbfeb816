"""`dfscan bank`: hash banks of known content (PDQ, MD5, SHA-256) that every scan matches its files against."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import click

from dfscan.commands._options import db_option, json_option, migrated_database, reports_errors
from dfscan.core.constants import DEFAULT_MAX_PIXELS

_SHOW_BAD = 20  # bad lines printed one by one; the rest are counted


@click.group()
def bank() -> None:
    """Hash banks: lists of known content, matched against every scanned file.

    PDQ banks match within a distance (default 31 bits of 256, as Meta's HMA);
    MD5 and SHA-256 banks match exact bytes.  Files are hex, one hash a line,
    optionally ``,REF,LABEL`` (ThreatExchange's and HMA's PDQ exports).
    """


@bank.command("create")
@click.argument("name")
@click.option("--kind", type=click.Choice(["pdq", "md5", "sha256"]), default="pdq", show_default=True,
              envvar="DFSCAN_BANK_KIND", show_envvar=True, help="What the bank holds.")
@click.option("--distance", type=click.IntRange(0, 256), default=31, show_default=True,
              envvar="DFSCAN_BANK_DISTANCE", show_envvar=True, help="PDQ: match within this many bits.")
@click.option("--webhook", "webhook_url", default=None, envvar="DFSCAN_BANK_WEBHOOK", show_envvar=True,
              help="POST each matched file here, signed (X-Dfscan-Signature) with the secret printed once.")
@db_option
@reports_errors
def create(name: str, kind: str, distance: int, webhook_url: str | None, db_url: str) -> None:
    """Create an empty bank NAME."""
    from dfscan.db import banks

    with migrated_database(db_url) as sessions, sessions.begin() as session:
        info, secret = banks.create_bank(session, name, kind=kind, distance=distance, webhook_url=webhook_url)
    click.echo(f"bank {info.name!r} created ({info.kind}" + (f", distance {info.distance})" if kind == "pdq" else ")"))
    if secret:
        click.echo(f"webhook signing secret (shown once): {secret}")


def _entries(parsed: Iterator, strict: bool, bad: list) -> Iterator[tuple[str, str | None, str | None]]:
    from dfscan.workers.hashing import BadLine

    for entry in parsed:
        if isinstance(entry, BadLine):
            if strict:
                raise click.ClickException(f"{entry} (--strict: nothing imported)")
            bad.append(entry)
            continue
        yield entry


@bank.command("import")
@click.argument("name")
@click.argument("file", type=click.File("r", encoding="utf-8", errors="replace"))
@click.option("--strict/--no-strict", default=False, envvar="DFSCAN_BANK_STRICT", show_envvar=True,
              help="Stop at the first malformed line and import nothing [default: report it and go on].")
@db_option
@reports_errors
def import_(name: str, file, strict: bool, db_url: str) -> None:
    """Import FILE (one hash a line, optionally ,REF,LABEL; '-' reads standard input) into bank NAME."""
    from dfscan.db import banks
    from dfscan.workers.hashing import parse_bank_lines

    bad: list = []
    with migrated_database(db_url) as sessions, sessions.begin() as session:
        kind = banks.get_bank(session, name).kind
        added = banks.add_hashes(session, name, _entries(parse_bank_lines(file, kind), strict, bad))
    for line in bad[:_SHOW_BAD]:
        click.echo(f"{getattr(file, 'name', 'input')}: {line}", err=True)
    if len(bad) > _SHOW_BAD:
        click.echo(f"... and {len(bad) - _SHOW_BAD} more malformed lines", err=True)
    click.echo(f"bank {name!r}: {added} hashes imported" + (f", {len(bad)} malformed lines skipped" if bad else ""))


def _files(paths: tuple[str, ...]) -> Iterator[Path]:
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file())
        else:
            yield p


def _hash_file(path: Path, kind: str) -> str:
    from dfscan.workers.scoring.hashes import pdq_of_bytes

    data = path.read_bytes()
    if kind == "md5":
        return hashlib.md5(data).hexdigest()
    if kind == "sha256":
        return hashlib.sha256(data).hexdigest()
    return pdq_of_bytes(data, DEFAULT_MAX_PIXELS).hex


@bank.command("add")
@click.argument("name")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--label", default=None, envvar="DFSCAN_BANK_LABEL", show_envvar=True,
              help="The label every added hash carries.")
@db_option
@reports_errors
def add(name: str, paths: tuple[str, ...], label: str | None, db_url: str) -> None:
    """Hash the image files PATHS (directories: every file in them) into bank NAME; the reference is the path."""
    from dfscan.db import banks
    from dfscan.workers.reading import ImageError

    entries, failed = [], 0
    with migrated_database(db_url) as sessions:
        with sessions() as session:
            kind = banks.get_bank(session, name).kind
        for path in _files(paths):
            try:
                entries.append((_hash_file(path, kind), str(path), label))
            except (ImageError, OSError) as exc:
                failed += 1
                click.echo(f"{path}: not hashed: {getattr(exc, 'message', None) or exc}", err=True)
        with sessions.begin() as session:
            added = banks.add_hashes(session, name, entries)
    click.echo(f"bank {name!r}: {added} hashes added" + (f", {failed} files not hashed" if failed else ""))


@bank.command("list")
@json_option("the banks")
@db_option
@reports_errors
def list_(as_json: bool, db_url: str) -> None:
    """List the banks: kind, distance, hashes, enabled."""
    from dfscan.db import banks

    with migrated_database(db_url) as sessions, sessions() as session:
        found = banks.list_banks(session)
    if as_json:
        click.echo(json.dumps([b.as_dict() for b in found], default=str, indent=2))
        return
    if not found:
        click.echo("no hash banks (dfscan bank create NAME)")
    for b in found:
        state = "enabled" if b.enabled else "disabled"
        distance = f" distance {b.distance}" if b.kind == "pdq" else ""
        click.echo(f"{b.name}\t{b.kind}{distance}\t{b.size} hashes\t{state}" + ("\twebhook" if b.webhook_url else ""))


@bank.command("export")
@click.argument("name")
@click.option("-o", "--output", type=click.File("w"), default="-", envvar="DFSCAN_BANK_OUTPUT", show_envvar=True,
              help="Where to write (default: standard output).")
@db_option
@reports_errors
def export(name: str, output, db_url: str) -> None:
    """Write bank NAME as HASH,REF,LABEL lines (the format `bank import` reads)."""
    from dfscan.db import banks

    with migrated_database(db_url) as sessions, sessions() as session:
        for h, ref, label in banks.iter_hashes(session, name):
            output.write(",".join((h, _field(ref), _field(label))).rstrip(",") + "\n")


def _field(value: str | None) -> str:
    return (value or "").replace(",", " ").replace("\n", " ")


def _switch(name: str, enabled: bool, db_url: str) -> None:
    from dfscan.db import banks

    with migrated_database(db_url) as sessions, sessions.begin() as session:
        banks.set_enabled(session, name, enabled)
    click.echo(f"bank {name!r} {'enabled' if enabled else 'disabled'}")


@bank.command("disable")
@click.argument("name")
@db_option
@reports_errors
def disable(name: str, db_url: str) -> None:
    """Stop matching against bank NAME (its hashes stay)."""
    _switch(name, False, db_url)


@bank.command("enable")
@click.argument("name")
@db_option
@reports_errors
def enable(name: str, db_url: str) -> None:
    """Match against bank NAME again."""
    _switch(name, True, db_url)


@bank.command("drop")
@click.argument("name")
@db_option
@reports_errors
def drop(name: str, db_url: str) -> None:
    """Delete bank NAME and its hashes (matches already found keep the bank's name)."""
    from dfscan.db import banks

    with migrated_database(db_url) as sessions, sessions.begin() as session:
        banks.drop_bank(session, name)
    click.echo(f"bank {name!r} dropped")


COMMANDS = [bank]
