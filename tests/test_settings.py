"""Settings: CLI over environment over defaults, validated before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dfscan.cli import main
from dfscan.core.settings import Settings, SettingsError, from_env, parse_extensions


def test_environment_then_overrides():
    env = {"DFSCAN_DB_URL": "sqlite:///x.db", "DFSCAN_BATCH_SIZE": "32", "DFSCAN_EXTENSIONS": "JPG,png"}
    s = from_env(env)
    assert (s.db_url, s.batch_size, s.extensions) == ("sqlite:///x.db", 32, (".jpg", ".png"))
    assert from_env(env, batch_size=8).batch_size == 8
    assert from_env({}).db_url == "sqlite:///dfscan.db"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"DFSCAN_BATCH_SIZE": "lots"}, "DFSCAN_BATCH_SIZE"),
        ({"DFSCAN_THRESHOLD": "2"}, "threshold"),
        ({"DFSCAN_CHUNK_SIZE": "0"}, "chunk size"),
        ({"DFSCAN_EXTENSIONS": ","}, "empty"),
    ],
)
def test_bad_values_fail_at_start(env, message):
    with pytest.raises(SettingsError, match=message):
        from_env(env)


def test_extensions_are_normalised():
    assert parse_extensions(".JPG, jpeg ,png,png") == (".jpg", ".jpeg", ".png")


def test_with_keeps_unset_values():
    s = Settings(batch_size=16).with_(batch_size=None, model=Path("m.onnx"))
    assert s.batch_size == 16 and s.model == Path("m.onnx")


def test_cli_reads_environment_variables(tmp_path, tiny_onnx_model, monkeypatch):
    from tests._images import write_jpegs

    write_jpegs(tmp_path / "imgs", 2)
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("DFSCAN_DB_URL", url)
    monkeypatch.setenv("DFSCAN_MODEL", str(tiny_onnx_model))
    res = CliRunner().invoke(main, ["scan", str(tmp_path / "imgs"), "--json"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "env.db").exists()
    # An option given on the command line wins over the variable.
    res = CliRunner().invoke(main, ["scan", str(tmp_path / "imgs"), "--model", str(tmp_path / "none.onnx")])
    assert res.exit_code != 0 and "none.onnx" in res.output


from tests._models import tiny_onnx_model  # noqa: E402,F401 - fixture


def test_migrate_command_creates_the_schema(tmp_path):
    import sqlalchemy

    url = f"sqlite:///{tmp_path / 'm.db'}"
    res = CliRunner().invoke(main, ["migrate", "--db", url])
    assert res.exit_code == 0, res.output
    names = sqlalchemy.inspect(sqlalchemy.create_engine(url)).get_view_names()
    assert sorted(names) == ["scan_faces", "scan_frames", "scan_matches", "scan_provenance", "scan_results",
                            "scan_reviews"]


def test_every_option_has_an_environment_variable(tmp_path):
    """Options without an explicit DFSCAN_* variable get DFSCAN_<COMMAND>_<OPTION>."""
    url = f"sqlite:///{tmp_path / 'none.db'}"
    res = CliRunner().invoke(main, ["results", "--db", url], env={"DFSCAN_RESULTS_LIMIT": "bogus"})
    assert res.exit_code != 0 and "'bogus' is not a valid integer" in res.output
