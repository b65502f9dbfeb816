"""The deployment files parse, and everything they name exists in the project.

No container engine, cluster or systemd runs here, so nothing is started:
each file is parsed (PyYAML, the Dockerfile line by line, systemd units with
configparser) and checked against the project itself: every ``dfscan``
subcommand and option it uses is one ``dfscan.cli.main`` has, every
``DFSCAN_*`` variable is one the CLI or ``dfscan.core.settings`` reads, every file
it copies or mounts from the repository exists, and the services the issue
asks for are there with the properties it asks for.
"""

from __future__ import annotations

import configparser
import re
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from dfscan.cli import main
from dfscan.core.settings import Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DFSCAN_VAR = re.compile(r"\bDFSCAN_[A-Z0-9_]+\b")
# What the issue names, by the names the distributed mode uses.
SUBCOMMANDS_USED = {"worker", "beat", "migrate"}


# --- the project's own surface ----------------------------------------------------------


def _commands() -> dict[str, click.Command]:
    return dict(main.commands)


def known_variables() -> set[str]:
    """Every DFSCAN_* variable the CLI (an option's envvar) or Settings (from_env) reads."""
    names = {env_name(f.name) for f in fields(Settings) if f.name != "extra"}
    for command in _commands().values():
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else list(envvar or ()))
    return names


def check_dfscan_args(args: list[str], where: str) -> str:
    """``args`` after ``dfscan``: the subcommand must exist and take every option given. Returns it."""
    assert args, f"{where}: empty dfscan command"
    name, rest = args[0], args[1:]
    if name.startswith("-"):
        assert name in ("--help", "--version"), f"{where}: dfscan {name}"
        return name
    commands = _commands()
    assert name in commands, f"{where}: `dfscan {name}` is not a command of dfscan (have: {', '.join(sorted(commands))})"
    options = {opt for p in commands[name].params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
    for arg in rest:
        if arg.startswith("-"):
            option = arg.split("=", 1)[0]
            assert option in options, f"{where}: `dfscan {name}` has no option {option}"
    return name


def variables_in(text: str) -> set[str]:
    return set(DFSCAN_VAR.findall(text))


def deploy_files(*patterns: str) -> list[Path]:
    return sorted(p for pattern in patterns for p in DEPLOY.rglob(pattern))


# --- Dockerfiles ------------------------------------------------------------------------


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        instruction, _, rest = full.partition(" ")
        out.append((instruction.upper(), rest.strip()))
    assert not pending, f"{path.name}: ends in a continuation line"
    return out


def _exec_form(arguments: str) -> list[str]:
    value = yaml.safe_load(arguments)  # a JSON array is YAML
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


@pytest.mark.parametrize("name", ["Dockerfile.gpu", "Dockerfile.cpu"])
def test_dockerfile_builds_the_project_and_runs_dfscan(name: str):
    path = DEPLOY / name
    instructions = parse_dockerfile(path)
    known = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL"}
    assert {i for i, _ in instructions} <= known, {i for i, _ in instructions} - known
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in instructions if i == "ARG" and "=" in a}
    base = next(a for i, a in instructions if i == "FROM")
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    if name == "Dockerfile.gpu":
        # CUDA and TensorRT come with the base; DALI with the package (nvidia-dali-cuda130).
        assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3", image), image
        assert "nvidia-dali-cuda130" in (ROOT / "pyproject.toml").read_text()
        run = " ".join(a for i, a in instructions if i == "RUN")
        assert "import tensorrt, nvidia.dali" in run  # the build fails without either
    else:
        assert re.fullmatch(r"python:3\.1[1-9][\w.-]*", image), image

    # Everything copied comes from the repository (the build context is its root).
    for instruction, arguments in instructions:
        if instruction == "COPY":
            *sources, _dest = arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY {source}: no such file in the repository"
    copied = {a.split()[0] for i, a in instructions if i == "COPY"}
    packages = {"dfscan", "scanner", "workers", "trt", "db", "detector"}
    assert packages <= copied and "pyproject.toml" in copied

    entrypoint = _exec_form(next(a for i, a in instructions if i == "ENTRYPOINT"))
    assert entrypoint == ["dfscan"]
    check_dfscan_args(_exec_form(next(a for i, a in instructions if i == "CMD")), name)
    env_lines = " ".join(a for i, a in instructions if i == "ENV")
    assert variables_in(env_lines) <= known_variables(), variables_in(env_lines) - known_variables()
    assert any(i == "USER" and a != "root" for i, a in instructions), "runs as root"

    ignore = (DEPLOY / f"{name}.dockerignore").read_text().split()
    assert "**" in ignore and all(f"!{p}/" in ignore for p in packages)


# --- compose --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _interpolated(value: str) -> str:
    # ${VAR:?message} / ${VAR:-default} as compose would see them, with VAR set.
    return re.sub(r"\$\{(\w+)(?::[?-][^}]*)?\}", r"<\1>", value)


def _command(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _dfscan_services(compose: dict) -> dict[str, dict]:
    """Services running a dfscan image (built from deploy/Dockerfile.* or tagged like one)."""
    return {name: s for name, s in compose["services"].items() if str(s.get("image", "")).startswith("dfscan-")}


def test_compose_has_the_services_the_fleet_needs(compose):
    services = compose["services"]
    assert {"redis", "postgres", "migrate", "worker-gpu", "worker-cpu", "beat", "flower"} <= set(services)

    redis = " ".join(_command(services["redis"]))
    assert "--appendonly yes" in redis and "--maxmemory-policy noeviction" in redis
    assert re.search(r"--requirepass \$\{REDIS_PASSWORD", redis)
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert "POSTGRES_PASSWORD" in services["postgres"]["environment"]
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert {"redis-data", "postgres-data"} <= set(compose["volumes"])

    # Migrations run once, before any worker.
    assert _command(services["migrate"]) == ["migrate"]
    assert services["migrate"].get("restart") == "no"
    for name in ("worker-gpu", "worker-cpu", "beat"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name

    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d.get("driver") == "nvidia" for d in gpu)
    assert services["worker-gpu"]["image"] == "dfscan-gpu"
    assert services["worker-gpu"]["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    assert services["migrate"]["build"]["dockerfile"] == "deploy/Dockerfile.cpu"
    assert "flower" in _command(services["flower"])


def test_compose_commands_and_variables_exist_in_the_project(compose):
    used = set()
    for name, service in _dfscan_services(compose).items():
        command = _command(service)
        if command:
            used.add(check_dfscan_args(command, f"compose service {name}"))
        if service.get("build"):
            assert (ROOT / service["build"]["dockerfile"]).exists()
            assert (DEPLOY / service["build"]["context"]).resolve() == ROOT
    assert SUBCOMMANDS_USED <= used
    text = (DEPLOY / "compose.yaml").read_text()
    assert variables_in(text) <= known_variables(), variables_in(text) - known_variables()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    # Every ${VAR} compose needs is documented in the example .env.
    needed = set(re.findall(r"\$\{(\w+)", text))
    example = {line.split("=", 1)[0] for line in (DEPLOY / "compose.env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert needed <= example, needed - example
    # The broker URL carries the password Redis requires.
    url = _interpolated(compose["x-dfscan-env"]["DFSCAN_BROKER_URL"])
    assert url == "redis://:<REDIS_PASSWORD>@redis:6379/0"


def test_the_example_schedules_are_ones_beat_accepts(tmp_path):
    from dfscan.workers.fleet.schedule import load_schedule

    example = load_schedule(DEPLOY / "schedule.example.toml")
    k8s = yaml.safe_load_all((DEPLOY / "k8s" / "configmap.yaml").read_text())
    (tmp_path / "schedule.toml").write_text(
        next(d for d in k8s if d["metadata"]["name"] == "dfscan-schedule")["data"]["schedule.toml"])
    assert example and load_schedule(tmp_path / "schedule.toml") == example
    for entry in example:
        entry.crontab()  # raises on a bad cron line


# --- Kubernetes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[tuple[Path, dict]]:
    docs = []
    for path in deploy_files("k8s/*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), path
                docs.append((path, doc))
    return docs


def _by_kind(manifests, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in manifests if d["kind"] == kind}


def _containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def test_kubernetes_manifests_have_workers_beat_and_migration(manifests):
    deployments = _by_kind(manifests, "Deployment")
    gpu = deployments["dfscan-worker-gpu"]
    limits = _containers(gpu)[0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    beat = deployments["dfscan-beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    job = _by_kind(manifests, "Job")["dfscan-migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    configmaps = _by_kind(manifests, "ConfigMap")
    assert {"dfscan-config", "dfscan-schedule"} <= set(configmaps)
    secrets = _by_kind(manifests, "Secret")

    used = set()
    for doc in [*deployments.values(), job]:
        for container in _containers(doc):
            name = doc["metadata"]["name"]
            assert container["image"].split("/")[-1].split(":")[0] in ("dfscan-gpu", "dfscan-cpu"), name
            used.add(check_dfscan_args(container["args"], f"k8s {name}"))
            env = {e["name"]: e for e in container.get("env", [])}
            # Credentials come from the Secret, never inline.
            for var in ("DFSCAN_DB_URL", "DFSCAN_BROKER_URL"):
                if var in env:
                    ref = env[var]["valueFrom"]["secretKeyRef"]
                    assert ref["name"] in secrets and ref["key"] in secrets[ref["name"]]["stringData"], (name, var)
            assert "DFSCAN_DB_URL" in env, name
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"].get("volumes", [])}
            assert mounts <= set(volumes), name
            for volume in volumes.values():
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in configmaps
    assert SUBCOMMANDS_USED <= used


def test_kubernetes_variables_exist_in_the_project(manifests):
    found: set[str] = set()
    for _, doc in manifests:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "dfscan-config":
            found |= set(doc["data"])
        if doc["kind"] in ("Deployment", "Job"):
            for container in _containers(doc):
                found |= {e["name"] for e in container.get("env", [])}
    assert found and {v for v in found if v.startswith("DFSCAN_")} <= known_variables(), found - known_variables()


# --- systemd ----------------------------------------------------------------------------


def parse_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # keys are case-sensitive
    unit.read_string(path.read_text())
    return unit


def test_systemd_units_run_dfscan_commands_that_exist():
    units = {p.name: parse_unit(p) for p in deploy_files("systemd/*.service")}
    assert {"dfscan-worker@.service", "dfscan-beat.service", "dfscan-migrate.service"} <= set(units)
    used = set()
    for name, unit in units.items():
        assert {"Unit", "Service", "Install"} <= set(unit.sections()), name
        exec_start = unit["Service"]["ExecStart"]
        argv = shlex.split(exec_start)
        assert Path(argv[0]).name == "dfscan", name
        used.add(check_dfscan_args(argv[1:], name))
        assert unit["Service"]["EnvironmentFile"] == "/etc/dfscan/dfscan.env"
        if name != "dfscan-migrate.service":
            assert "dfscan-migrate.service" in unit["Unit"]["Requires"], name
            assert "dfscan-migrate.service" in unit["Unit"]["After"], name
        assert unit["Service"].get("User") == "dfscan", name
    assert SUBCOMMANDS_USED <= used
    worker = units["dfscan-worker@.service"]["Service"]
    # configparser keeps only the last of repeated keys; read every Environment= line.
    environment = re.findall(r"^Environment=(.*)$", (DEPLOY / "systemd" / "dfscan-worker@.service").read_text(), re.M)
    assert "CUDA_VISIBLE_DEVICES=%i" in environment
    assert "%%h" in worker["ExecStart"]  # systemd turns %% into %, Celery's %h is the host name
    assert units["dfscan-migrate.service"]["Service"]["Type"] == "oneshot"


def test_systemd_variables_exist_in_the_project():
    text = "\n".join(p.read_text() for p in deploy_files("systemd/*"))
    assert variables_in(text) and variables_in(text) <= known_variables(), variables_in(text) - known_variables()


# --- the README -------------------------------------------------------------------------


def test_readme_explains_every_file():
    readme = (DEPLOY / "README.md").read_text()
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name != "README.md"):
        rel = path.relative_to(DEPLOY).as_posix()
        assert rel in readme, f"deploy/README.md does not mention {rel}"
    commands = set(re.findall(r"\bdfscan ([a-z][a-z-]+)", readme))
    assert commands and commands <= set(_commands()) | {"scan"}, commands - set(_commands())
    assert variables_in(readme) <= known_variables(), variables_in(readme) - known_variables()
