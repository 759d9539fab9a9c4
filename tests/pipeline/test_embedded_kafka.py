"""The embedded broker: reuse of a running broker, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.embedded_kafka import BrokerError, EmbeddedKafka, default_cache_dir, new_cluster_id
from pipeline.settings import Settings


@pytest.mark.integration
def test_starting_twice_reuses_the_running_broker(
    kafka_bootstrap: str, base_settings: Settings
) -> None:
    broker = EmbeddedKafka(base_settings.cache_dir or default_cache_dir())
    running = broker.status()
    if running is None or running.bootstrap_servers != kafka_bootstrap:
        pytest.skip("tests use an external broker")
    again = broker.start()
    assert again == running  # same pid, same port: nothing was started


def test_missing_maven_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn, no java
    with pytest.raises(BrokerError, match="Maven"):
        EmbeddedKafka(tmp_path / "cache").ensure_jars()


def test_status_is_none_when_nothing_runs(tmp_path: Path) -> None:
    assert EmbeddedKafka(tmp_path / "cache").status() is None
    assert EmbeddedKafka(tmp_path / "cache").stop() is False


def test_a_cluster_id_never_starts_with_a_dash() -> None:
    """kafka-storage would read ``-...`` as an option: such a draw is thrown away."""
    draws = iter([bytes([0xF8]) + bytes(15), bytes(16)])  # the first encodes as "-AAA..."
    assert new_cluster_id(lambda: next(draws)) == "AAAAAAAAAAAAAAAAAAAAAA"
    assert all(not new_cluster_id().startswith("-") for _ in range(500))
