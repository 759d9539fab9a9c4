"""Shared fixtures: the real Kafka broker (session-scoped) and unique names per test.

The broker is the one named by RECLOOP__KAFKA__BOOTSTRAP_SERVERS when set; otherwise the
embedded single-node broker, started here if it is not running (and stopped at the end
only if this session started it).

Every topic and consumer group a test makes is named after its ``unique_name`` and is
deleted when the test ends; a session that starts the embedded broker first deletes what
killed runs left behind. A broker that kept every test's topics would hold thousands of
partitions and take long enough to load them after a restart that a worker started right
then saw none of its topics.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.embedded_kafka import EmbeddedKafka, default_cache_dir
from pipeline.settings import Settings, load_settings
from pipeline.topics import delete_matching, owned_by

log = logging.getLogger(__name__)

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
    if started_here:  # nobody else is using it yet: what killed runs left is clutter
        _sweep(info.bootstrap_servers)
    try:
        yield info.bootstrap_servers
    finally:
        if started_here:
            broker.stop()


#: Names :func:`unique_name` makes, and the topics and groups named after them.
_TEST_NAME = re.compile(r"t[0-9a-f]{10}([.-]|$)")


def _sweep(bootstrap: str) -> None:
    """Delete every topic and group named after a test (of runs that could not clean up)."""
    test_made = lambda name: _TEST_NAME.match(name) is not None  # noqa: E731
    _warn_about(delete_matching(bootstrap, test_made, test_made, timeout_s=120).errors)


def _warn_about(errors: list[str]) -> None:
    # logged, not warned: warnings fail the run, and leftovers are only clutter
    if errors:
        log.warning("%d left on the broker, e.g. %s", len(errors), errors[0])


@pytest.fixture
def unique_name() -> str:
    """A short unique name: topic prefixes, consumer groups and app ids never collide."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def _delete_what_the_test_made(request: pytest.FixtureRequest, unique_name: str) -> Iterator[None]:
    """After a test on the broker: delete the topics and groups named after it.

    Asks for ``unique_name`` (a test's own name, made first and so torn down after this).
    """
    yield
    if "kafka_bootstrap" in request.fixturenames:
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        made = owned_by(unique_name)
        _warn_about(delete_matching(bootstrap, made, made).errors)


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
