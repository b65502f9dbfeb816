"""``dfscan plugin build``: the browser extension (plugin/) with a model, unpacked and zipped."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dfscan.commands._options import json_option, reports_errors


@click.group("plugin")
def plugin() -> None:
    """The browser extension: right-click an image, "Check with dfscan" (local or server mode)."""


@plugin.command("build")
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="ONNX model for local mode (its model_info.json gives the preprocessing).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for the unpacked extension (replaced); the zip is written beside it as OUT.zip.")
@click.option("--plugin-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The repository's plugin/ folder, after `npm ci` there [default: the one beside this package].")
@click.option("--no-zip", is_flag=True, help="Only the unpacked folder.")
@json_option("the sizes")
@reports_errors
def build(model: Path, out: Path, plugin_dir: Path | None, no_zip: bool, as_json: bool) -> None:
    """Build the extension: sources, the onnxruntime-web WASM files it uses, the model and its preprocessing.

    Load OUT in chrome://extensions ("Load unpacked") or publish OUT.zip.
    """
    from dfscan.plugin import PLUGIN_DIR, PluginBuildError, build_extension

    try:
        result = build_extension(model, out, plugin_dir or PLUGIN_DIR, make_zip=not no_zip)
    except PluginBuildError as exc:
        raise click.ClickException(str(exc)) from None
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    mb = lambda n: f"{n / 2**20:.1f} MB"  # noqa: E731
    click.echo(f"extension: {result.out} ({mb(result.extension_bytes)}; model {mb(result.model_bytes)}, "
               f"onnxruntime-web {mb(result.ort_bytes)})")
    if not no_zip:
        click.echo(f"zip:       {result.zip_path} ({mb(result.zip_bytes)})")


COMMANDS = [plugin]
