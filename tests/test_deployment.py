"""Static checks of the deployment files: Docker cannot run here, so nothing is started.

Each test reads docker-compose.yml, the Dockerfile, the example config or the Makefile and
checks it against the code it deploys (the click CLI, the settings model, the scripts), so
that renaming a command or a settings field breaks this test instead of a deployment.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
import yaml
from pydantic import BaseModel

from pipeline.cli import cli
from pipeline.settings import ENV_PREFIX, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MAKEFILE = ROOT / "Makefile"
EXAMPLE_CONFIG = ROOT / "config" / "recloop.example.yaml"
STATE_DIR = "/var/lib/recloop"


# -- docker-compose.yml ----------------------------------------------------------------
def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict), "docker-compose.yml must hold a mapping"
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose().get("services")
    assert isinstance(services, dict) and services, "docker-compose.yml defines no services"
    return services


def _recloop_services() -> dict[str, dict[str, Any]]:
    """The services that run the image built from this repository."""
    built = {name: spec for name, spec in _services().items() if "build" in spec}
    assert built, "no service builds the recloop image"
    return built


def _environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    # a key without a value is passed through from the host: nothing to check here
    return {key: str(value) for key, value in raw.items() if value is not None}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert command, "a recloop service must name its subcommand"
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Each volume entry as (type, source, target); type is ``bind`` or ``volume``."""
    mounts = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            source, target = str(entry.get("source", "")), str(entry["target"])
            kind = str(entry.get("type", "volume"))
        else:
            source, target = str(entry).split(":")[:2]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        mounts.append((kind, source, target))
    return mounts


def _service_settings(service: dict[str, Any]) -> Settings:
    """The settings a service's container would load: its config file and RECLOOP__ vars."""
    env = _environment(service)
    config_path = None
    if "RECLOOP_CONFIG" in env:
        sources = [
            src
            for kind, src, dst in _mounts(service)
            if kind == "bind" and dst == env["RECLOOP_CONFIG"]
        ]
        assert sources, f"RECLOOP_CONFIG={env['RECLOOP_CONFIG']} is not mounted from the repo"
        config_path = ROOT / sources[0]
    overrides = {key: value for key, value in env.items() if key.startswith(ENV_PREFIX)}
    return load_settings(config_path, overrides)


def _advertised_listeners() -> dict[str, str]:
    """The Kafka service's advertised listeners, name -> host:port."""
    spec = _environment(_services()["kafka"]).get("KAFKA_ADVERTISED_LISTENERS", "")
    return dict(entry.strip().split("://", 1) for entry in spec.split(",") if entry.strip())


def _resolve_subcommand(args: list[str]) -> list[str]:
    """Walk ``args`` down the click CLI as ``recloop ARGS`` would; returns the command path."""
    command: click.Command = cli
    path: list[str] = []
    rest = list(args)
    while isinstance(command, click.Group):
        while rest and rest[0].startswith("-"):
            flag = rest.pop(0)
            options = [
                p
                for p in command.params
                if isinstance(p, click.Option) and flag.split("=")[0] in p.opts
            ]
            assert options, f"recloop {' '.join(path)} has no option {flag}"
            if not options[0].is_flag and "=" not in flag:
                rest.pop(0)
        assert rest, f"recloop {' '.join(path)} needs a subcommand"
        name = rest.pop(0)
        subcommand = command.commands.get(name)
        assert subcommand is not None, (
            f"recloop {' '.join([*path, name])} does not exist; choices: {sorted(command.commands)}"
        )
        path.append(name)
        command = subcommand
    return path


def test_compose_defines_kafka_topics_and_worker() -> None:
    assert {"kafka", "topics", "worker"} <= set(_services())


def test_every_build_context_and_dockerfile_exists() -> None:
    for name, service in _recloop_services().items():
        build = service["build"]
        spec = {"context": build} if isinstance(build, str) else build
        context = ROOT / spec.get("context", ".")
        assert context.is_dir(), f"{name}: build context {context} is missing"
        dockerfile = context / spec.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"


def test_every_mounted_repo_file_exists_and_named_volumes_are_declared() -> None:
    declared = set(_compose().get("volumes") or {})
    for name, service in _services().items():
        for kind, source, target in _mounts(service):
            if kind == "bind":
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
            else:
                assert source in declared, f"{name} mounts undeclared volume {source!r}"
            assert PurePosixPath(target).is_absolute(), f"{name}: {target} is not absolute"


def test_service_commands_are_recloop_subcommands() -> None:
    commands = {name: _resolve_subcommand(_command(s)) for name, s in _recloop_services().items()}
    assert commands["topics"] == ["topics", "create"]
    assert commands["worker"] == ["worker"]


def test_service_settings_are_real_fields_and_name_an_external_broker() -> None:
    advertised = set(_advertised_listeners().values())
    for name, service in _recloop_services().items():
        try:
            settings = _service_settings(service)
        except SettingsError as exc:
            pytest.fail(f"{name}: {exc}")
        bootstrap = settings.kafka.bootstrap_servers
        # unset would start the embedded broker, which the image cannot run
        assert bootstrap, f"{name}: RECLOOP__KAFKA__BOOTSTRAP_SERVERS is not set"
        for server in bootstrap.split(","):
            assert server in advertised, f"{name}: {server} is not a listener Kafka advertises"
            assert not server.startswith(("localhost:", "127.")), f"{name}: {server} is local"


@pytest.mark.parametrize(
    ("var", "named"),
    [
        ("RECLOOP__KAFKA__BOOTSTRAP_SERVER", "bootstrap_server"),
        ("RECLOOP__WORKERS__STATE_DIR", "workers"),
        ("RECLOOP__WORKER__STATEDIR", "statedir"),
    ],
)
def test_a_misspelt_setting_is_an_error(var: str, named: str) -> None:
    env = {**_environment(_services()["worker"]), var: "x"}
    overrides = {key: value for key, value in env.items() if key.startswith(ENV_PREFIX)}
    with pytest.raises(SettingsError, match=named):
        load_settings(None, overrides)


def test_worker_state_dir_is_a_named_volume() -> None:
    worker = _services()["worker"]
    state_dir = str(_service_settings(worker).worker.state_dir)
    assert state_dir == STATE_DIR
    volumes = {target: kind for kind, _, target in _mounts(worker)}
    assert volumes.get(state_dir) == "volume", f"{state_dir} would not survive a new container"
    assert "restart" in worker and worker["restart"] != "no"


def test_kafka_is_apache_kafka_4() -> None:
    image = _services()["kafka"]["image"]
    assert re.fullmatch(r"(docker\.io/)?apache/kafka:4\.\d+(\.\d+)?", image), image


def test_kafka_runs_kraft_combined_with_consistent_listeners() -> None:
    kafka = _services()["kafka"]
    env = _environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["CLUSTER_ID"], "the image needs CLUSTER_ID to format its storage in KRaft mode"
    node_id = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node_id}@")
    protocols = dict(
        entry.strip().split(":") for entry in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    listeners = dict(entry.strip().split("://") for entry in env["KAFKA_LISTENERS"].split(","))
    advertised = _advertised_listeners()
    assert "PLAINTEXT_HOST" in advertised, "no listener for clients on the host"
    for listener in [*advertised, env["KAFKA_CONTROLLER_LISTENER_NAMES"]]:
        assert listener in listeners, f"{listener} is advertised but not listened on"
        assert listener in protocols, f"{listener} has no security protocol"
    for setting in ("OFFSETS_TOPIC", "TRANSACTION_STATE_LOG"):
        assert env[f"KAFKA_{setting}_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    log_dir = env.get("KAFKA_LOG_DIRS")
    assert log_dir in {target for kind, _, target in _mounts(kafka) if kind == "volume"}


def test_services_start_in_order_once_kafka_is_healthy() -> None:
    services = _services()
    probe = services["kafka"]["healthcheck"]["test"]
    probe = " ".join(probe) if isinstance(probe, list) else probe
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in probe
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    worker_needs = services["worker"]["depends_on"]["topics"]["condition"]
    assert worker_needs == "service_completed_successfully"


# -- Dockerfile ------------------------------------------------------------------------
def _instructions() -> list[tuple[str, str]]:
    """Every instruction as (KEYWORD, arguments), continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pending = ""
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return instructions[starts[-1] :]


def _base_images() -> list[str]:
    """Each stage's base image, with the ARG defaults declared before the first FROM."""
    defaults: dict[str, str] = {}
    images: list[str] = []
    stage_names: set[str] = set()
    for keyword, arguments in _instructions():
        if keyword == "ARG" and not images and "=" in arguments:
            name, value = arguments.split("=", 1)
            defaults[name] = value
        elif keyword == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--")]
            image = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), ""), words[0])
            images.append(image)
            if len(words) == 3 and words[1].upper() == "AS":
                stage_names.add(words[2])
    return [image for image in images if image not in stage_names]


def _exec_form(keyword: str) -> list[str]:
    values = [args for key, args in _final_stage() if key == keyword]
    assert values, f"the runtime stage has no {keyword}"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list), f"{keyword} must use the exec (JSON) form"
    return [str(arg) for arg in parsed]


def test_dockerfile_entrypoint_is_the_recloop_console_script() -> None:
    assert _exec_form("ENTRYPOINT") == ["recloop"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "recloop" in scripts
    assert _resolve_subcommand(_exec_form("CMD")) == ["worker"]


def test_dockerfile_copies_only_files_that_exist_and_are_not_ignored() -> None:
    ignored = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]
    copied = []
    for keyword, arguments in _instructions():
        if keyword not in {"COPY", "ADD"}:
            continue
        words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
        if any(word.startswith("--from") for word in words):
            continue
        sources = [word for word in words if not word.startswith("--")][:-1]
        assert sources, f"{keyword} {arguments} copies nothing"
        for source in sources:
            assert list(ROOT.glob(source)), f"{keyword} {source}: no such file in the context"
            hits = [pattern for pattern in ignored if fnmatch(source.rstrip("/"), pattern)]
            assert not hits, f"{keyword} {source} is excluded by .dockerignore {hits}"
            copied.append(source)
    assert "pyproject.toml" in copied


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".venv", ".git", "var", "reports"} <= ignored


def test_dockerfile_runtime_is_non_root_with_a_state_volume() -> None:
    stage = _final_stage()
    users = [arguments for keyword, arguments in stage if keyword == "USER"]
    assert users, "the runtime stage runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    volumes = [arguments for keyword, arguments in stage if keyword == "VOLUME"]
    assert volumes and STATE_DIR in json.loads(volumes[-1])


def test_dockerfile_builds_in_one_stage_and_runs_in_a_slim_one() -> None:
    images = _base_images()
    assert len(images) >= 2, "the compiler must stay in a build stage"
    assert set(images) == {"python:3.11-slim"}, images
    builds = " ".join(arguments for keyword, arguments in _instructions() if keyword == "RUN")
    assert "build-essential" in builds and "pip wheel" in builds
    runtime = " ".join(arguments for keyword, arguments in _final_stage() if keyword == "RUN")
    assert "build-essential" not in runtime


# -- config/recloop.example.yaml -------------------------------------------------------
def _field_tree(model: type[BaseModel]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            tree[name] = _field_tree(nested)
        else:
            tree[name] = None
    return tree


def _key_tree(data: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _key_tree(value) if isinstance(value, dict) else None for key, value in data.items()
    }


def test_example_config_loads_to_the_defaults() -> None:
    assert load_settings(EXAMPLE_CONFIG, {}) == Settings()


def test_example_config_lists_every_field() -> None:
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert _key_tree(data) == _field_tree(Settings)


# -- Makefile --------------------------------------------------------------------------
def _make_rules() -> dict[str, list[str]]:
    """Each rule's target and its recipe lines (tab-indented, as make requires)."""
    rules: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in MAKEFILE.read_text().splitlines():
        if line.startswith("\t") and current is not None:
            current.append(line.strip())
        elif match := re.match(r"^([A-Za-z0-9_-]+)\s*:(?!=)", line):
            current = rules.setdefault(match.group(1), [])
        elif line.strip() and not line.startswith("#"):
            current = None
    return rules


def test_makefile_targets_are_phony_and_call_executable_scripts() -> None:
    rules = _make_rules()
    wanted = {"test", "demo", "kafka-start", "kafka-stop", "lint", "clean"}
    phony = {
        name
        for line in re.findall(r"^\.PHONY\s*:(.*)$", MAKEFILE.read_text(), re.M)
        for name in line.split()
    }
    assert wanted <= phony, f"not .PHONY: {wanted - phony}"
    for target in wanted:
        assert rules.get(target), f"make {target} has no recipe"
    called = {
        "test": "scripts/test",
        "demo": "scripts/demo",
        "kafka-start": "scripts/kafka start",
        "kafka-stop": "scripts/kafka stop",
    }
    for target, script in called.items():
        assert any(f"./{script}" in line for line in rules[target]), f"{target} skips {script}"
    assert any("ruff check" in line for line in rules["lint"])
    assert any("mypy" in line for line in rules["lint"])
    removed = {word for line in rules["clean"] if line.startswith("rm ") for word in line.split()}
    assert {"var", "reports"} <= removed
    assert not removed & {".venv", "$(VENV)", ".", "*"}, "make clean must keep .venv"
    for recipe in rules.values():
        for script in re.findall(r"\./(scripts/[\w.-]+)", " ".join(recipe)):
            path = ROOT / script
            assert path.is_file(), f"{script} is missing"
            assert os.access(path, os.X_OK), f"{script} is not executable"
