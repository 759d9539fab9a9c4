"""Shared fixtures: the real Kafka broker (session-scoped) and unique names per test.

The broker is the one named by RECLOOP__KAFKA__BOOTSTRAP_SERVERS when set; otherwise the
embedded single-node broker, started here if it is not running (and stopped at the end
only if this session started it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.embedded_kafka import EmbeddedKafka, default_cache_dir
from pipeline.settings import Settings, load_settings

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """Settings as the entry point would load them (the test run's environment)."""
    return load_settings(None, os.environ)


@pytest.fixture(scope="session")
def kafka_bootstrap(base_settings: Settings) -> Iterator[str]:
    """The bootstrap servers of a real broker for the whole session."""
    if base_settings.kafka.bootstrap_servers:
        yield base_settings.kafka.bootstrap_servers
        return
    broker = EmbeddedKafka(base_settings.cache_dir or default_cache_dir())
    started_here = broker.status() is None
    info = broker.start()
    try:
        yield info.bootstrap_servers
    finally:
        if started_here:
            broker.stop()


@pytest.fixture
def unique_name() -> str:
    """A short unique name: topic prefixes, consumer groups and app ids never collide."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def kafka_settings(
    base_settings: Settings, kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> Settings:
    """Settings for one test: its own topics, app id (consumer group) and state directory."""
    kafka = base_settings.kafka.model_copy(
        update={
            "bootstrap_servers": kafka_bootstrap,
            "topic_prefix": f"{unique_name}.",
            "partitions": 2,
        }
    )
    worker = base_settings.worker.model_copy(
        update={"app_id": unique_name, "state_dir": tmp_path / "state", "log_level": "warn"}
    )
    return base_settings.model_copy(update={"kafka": kafka, "worker": worker})


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    """The MovieLens 100K folder beside the repository, or a skip saying where it was looked for."""
    path = DATASETS / "ml-100k"
    if not (path / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {path} (CI has it; a fresh clone may not)")
    return path
