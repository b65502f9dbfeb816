"""The commands of the ``dfscan`` group, one module per family.

Every module in this package that defines ``COMMANDS`` (a list of click
commands) is added to the ``dfscan`` group.  Modules must import heavy
packages (torch, tensorrt, celery) inside their commands, not at the top:
`dfscan --help` loads them all.
"""

from __future__ import annotations

import importlib
import pkgutil

import click


def register(group: click.Group) -> None:
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for command in getattr(module, "COMMANDS", ()):
            group.add_command(command)
