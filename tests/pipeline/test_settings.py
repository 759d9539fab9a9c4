"""load_settings (pipeline/settings.py): defaults, then the YAML file, then the environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.app import Recloop
from pipeline.settings import Settings, SettingsError, load_settings


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recloop.yaml"
    path.write_text(text)
    return path


def test_defaults_load_without_a_file_or_environment() -> None:
    settings = load_settings(None, {})

    assert settings == Settings()
    assert settings.kafka.bootstrap_servers is None  # the embedded broker
    assert settings.kafka.partitions == 4
    assert settings.kafka.topic("events") == "recloop.events"
    assert settings.worker.state_dir == Path("var/state")
    assert settings.limits.max_event_bytes == 64 * 1024
    assert settings.ranking.k == 10
    assert settings.cache_dir is None


def test_values_from_the_file_load_and_the_rest_keep_their_defaults(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        """
kafka:
  bootstrap_servers: broker-1:9092,broker-2:9092
  partitions: 12
  topic_prefix: prod.
worker:
  state_dir: /srv/recloop/state
  web_enabled: true
ranking:
  popularity_half_life_s: 3600
cache_dir: /tmp/recloop-cache
""",
    )

    settings = load_settings(path, {})

    assert settings.kafka.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert settings.kafka.partitions == 12
    assert settings.kafka.topic("snapshots") == "prod.snapshots"
    assert settings.kafka.replication_factor == 1
    assert settings.worker.state_dir == Path("/srv/recloop/state")
    assert settings.worker.web_enabled is True
    assert settings.worker.app_id == "recloop"
    assert settings.ranking.popularity_half_life_s == 3600.0
    assert settings.cache_dir == Path("/tmp/recloop-cache")


def test_an_empty_file_means_the_defaults(tmp_path: Path) -> None:
    assert load_settings(_file(tmp_path, ""), {}) == Settings()


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path, "kafka:\n  partitions: 12\n  topic_prefix: prod.\n")

    settings = load_settings(path, {"RECLOOP__KAFKA__PARTITIONS": "8"})

    assert settings.kafka.partitions == 8
    assert settings.kafka.topic_prefix == "prod."  # the rest of the section survives


def test_environment_values_are_typed_like_the_file() -> None:
    settings = load_settings(
        None,
        {
            "RECLOOP__KAFKA__PARTITIONS": "8",
            "RECLOOP__WORKER__WEB_ENABLED": "true",
            "RECLOOP__WORKER__COMMIT_INTERVAL_S": "0.5",
            "RECLOOP__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092",
            "RECLOOP__WORKER__STATE_DIR": "/data/state",
            "RECLOOP__CACHE_DIR": "/data/cache",
        },
    )

    assert settings.kafka.partitions == 8
    assert settings.worker.web_enabled is True
    assert settings.worker.commit_interval_s == 0.5
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.worker.state_dir == Path("/data/state")
    assert settings.cache_dir == Path("/data/cache")


def test_an_empty_environment_value_unsets_an_optional_setting(tmp_path: Path) -> None:
    path = _file(tmp_path, "kafka:\n  bootstrap_servers: broker:9092\n")

    settings = load_settings(path, {"RECLOOP__KAFKA__BOOTSTRAP_SERVERS": ""})

    assert settings.kafka.bootstrap_servers is None


def test_only_prefixed_variables_are_read() -> None:
    settings = load_settings(
        None, {"PATH": "/usr/bin", "KAFKA__PARTITIONS": "99", "RECLOOPKAFKA__PARTITIONS": "99"}
    )

    assert settings == Settings()


@pytest.mark.parametrize(
    ("text", "bad_key"),
    [
        pytest.param("kafka:\n  partitons: 8\n", "partitons", id="typo-in-section"),
        pytest.param("kafak:\n  partitions: 8\n", "kafak", id="unknown-section"),
        pytest.param("verbose: true\n", "verbose", id="unknown-top-level-key"),
    ],
)
def test_an_unknown_key_in_the_file_is_an_error(tmp_path: Path, text: str, bad_key: str) -> None:
    with pytest.raises(SettingsError, match=bad_key):
        load_settings(_file(tmp_path, text), {})


@pytest.mark.parametrize(
    ("name", "bad_key"),
    [
        pytest.param("RECLOOP__KAFKA__PARTITONS", "partitons", id="typo-in-section"),
        pytest.param("RECLOOP__KAFAK__PARTITIONS", "kafak", id="unknown-section"),
        pytest.param("RECLOOP__VERBOSE", "verbose", id="unknown-top-level-key"),
    ],
)
def test_an_unknown_key_in_the_environment_is_an_error(name: str, bad_key: str) -> None:
    with pytest.raises(SettingsError, match=bad_key):
        load_settings(None, {name: "8"})


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("kafka:\n  partitions: eight\n", id="word-for-int"),
        pytest.param("kafka:\n  partitions: 2.5\n", id="fraction-for-int"),
        pytest.param("kafka:\n  partitions: 0\n", id="below-minimum"),
        pytest.param("kafka:\n  partitions: [1, 2]\n", id="list-for-int"),
        pytest.param("kafka: 5\n", id="scalar-for-section"),
        pytest.param("worker:\n  web_port: 70000\n", id="port-out-of-range"),
        pytest.param("worker:\n  commit_interval_s: 0\n", id="zero-interval"),
        pytest.param("worker:\n  web_enabled: maybe\n", id="word-for-bool"),
        pytest.param("ranking:\n  k: 500\n", id="k-over-200"),
        pytest.param("limits:\n  max_event_bytes: 10\n", id="tiny-event-limit"),
        pytest.param("worker:\n  log_level: verbose\n", id="unknown-log-level"),
        pytest.param(
            "kafka:\n  replication_factor: 2\n  min_insync_replicas: 3\n",
            id="more-in-sync-than-replicas",
        ),
    ],
)
def test_a_wrong_type_or_value_in_the_file_is_an_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(SettingsError, match="invalid settings"):
        load_settings(_file(tmp_path, text), {})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("RECLOOP__KAFKA__PARTITIONS", "eight", id="word-for-int"),
        pytest.param("RECLOOP__KAFKA__PARTITIONS", "", id="empty-for-required-int"),
        pytest.param("RECLOOP__WORKER__WEB_PORT", "-1", id="negative-port"),
        pytest.param("RECLOOP__KAFKA", "5", id="scalar-for-section"),
        pytest.param("RECLOOP__WORKER__COMMIT_INTERVAL_S", ".inf", id="infinite-interval"),
        pytest.param("RECLOOP__HTTP__FORWARD_TIMEOUT_S", ".nan", id="nan-timeout"),
    ],
)
def test_a_wrong_type_in_the_environment_is_an_error(name: str, value: str) -> None:
    with pytest.raises(SettingsError):
        load_settings(None, {name: value})


def test_a_boolean_for_a_number_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError):
        load_settings(_file(tmp_path, "kafka:\n  partitions: true\n"), {})


@pytest.mark.parametrize("value", ["[a", "{unclosed", "@prod."])
def test_an_unparseable_environment_value_is_a_settings_error(value: str) -> None:
    with pytest.raises(SettingsError):
        load_settings(None, {"RECLOOP__KAFKA__TOPIC_PREFIX": value})


def test_a_section_set_both_as_a_value_and_as_a_section_is_a_settings_error() -> None:
    with pytest.raises(SettingsError):
        load_settings(None, {"RECLOOP__KAFKA": "5", "RECLOOP__KAFKA__PARTITIONS": "8"})


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml", {})


def test_malformed_yaml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(_file(tmp_path, "kafka: [unclosed\n"), {})


def test_a_file_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(_file(tmp_path, "- kafka\n- worker\n"), {})


def test_settings_are_frozen() -> None:
    settings = load_settings(None, {"RECLOOP__KAFKA__PARTITIONS": "8"})

    with pytest.raises(ValidationError):
        settings.kafka.partitions = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.kafka = settings.kafka  # type: ignore[misc]
    assert settings.kafka.partitions == 8


def test_loading_reads_only_the_mapping_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECLOOP__KAFKA__PARTITIONS", "99")

    assert load_settings(None, {}).kafka.partitions == 4


def test_heartbeats_must_fit_three_times_in_a_session() -> None:
    env = {"RECLOOP__WORKER__SESSION_TIMEOUT_S": "9", "RECLOOP__WORKER__HEARTBEAT_INTERVAL_S": "4"}
    with pytest.raises(SettingsError, match="at most a third of session_timeout_s"):
        load_settings(None, env)
    for heartbeat, session in (("2.2", "6.6"), ("2.1", "6.3"), ("3.3", "9.9")):  # a third exactly
        env = {"RECLOOP__WORKER__SESSION_TIMEOUT_S": session,
               "RECLOOP__WORKER__HEARTBEAT_INTERVAL_S": heartbeat}  # fmt: skip
        assert load_settings(None, env).worker.heartbeat_interval_s == float(heartbeat)


def test_min_insync_replicas_is_only_bounded_where_it_is_applied() -> None:
    # a production file's 2, run locally with one replica: the topics get no such setting
    env = {"RECLOOP__KAFKA__REPLICATION_FACTOR": "1", "RECLOOP__KAFKA__MIN_INSYNC_REPLICAS": "2"}
    assert load_settings(None, env).kafka.min_insync_replicas == 2


def test_a_log_level_is_one_faust_knows_in_any_case() -> None:
    assert load_settings(None, {"RECLOOP__WORKER__LOG_LEVEL": "INFO"}).worker.log_level == "info"


@pytest.mark.parametrize("value", ["abcdefghijklmnop #qrstuvwxyz", "#abcdefghijklmnopqr"])
def test_an_environment_value_yaml_would_cut_at_a_comment_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="YAML comment"):
        load_settings(None, {"RECLOOP__HTTP__TOKEN": value})
    quoted = load_settings(None, {"RECLOOP__HTTP__TOKEN": f"'{value}'"})
    assert quoted.http.token == value  # quoted, every character is kept


def test_a_worker_process_gets_the_token_in_its_environment_not_in_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from pipeline.worker_process import WorkerProcess

    token = "s3cret 'token' \"with\" #quotes, \u00fc and \U0001f511"
    settings = load_settings(None, {"RECLOOP__HTTP__TOKEN": json.dumps(token, ensure_ascii=False)})
    launched: dict[str, Any] = {}
    monkeypatch.setattr(subprocess, "Popen", lambda args, **kw: launched.update(kw) or None)
    WorkerProcess(settings, tmp_path / "worker.yaml", tmp_path / "worker.log").start()

    assert "s3cret" not in (tmp_path / "worker.yaml").read_text()
    child = load_settings(tmp_path / "worker.yaml", launched["env"])
    assert child.http.token == token and child == settings


def test_the_group_session_settings_reach_faust(recloop: Recloop) -> None:
    """A crashed worker's partitions move after ``worker.session_timeout_s``, not Faust's
    own 60 s: the fault suite's restarts and takeovers count on it."""
    worker = recloop.settings.worker
    assert worker.session_timeout_s == 10.0
    assert recloop.app.conf.broker_session_timeout == worker.session_timeout_s
    assert recloop.app.conf.broker_heartbeat_interval == worker.heartbeat_interval_s
