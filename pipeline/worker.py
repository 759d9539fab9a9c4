"""Running a worker process: topics first, then the Faust worker until it is stopped."""

from __future__ import annotations

import faust

from pipeline.app import Clock, create_app, utc_now
from pipeline.settings import Settings
from pipeline.topics import create_topics


def run_worker(settings: Settings, clock: Clock = utc_now) -> None:
    """Create any missing topics, then run one worker in this process until SIGTERM/SIGINT.

    Args:
        settings: with ``kafka.bootstrap_servers`` resolved.
        clock: the wall clock handed to the agents.

    """
    assert settings.kafka.bootstrap_servers is not None
    settings.worker.state_dir.mkdir(parents=True, exist_ok=True)
    create_topics(settings.kafka, settings.kafka.bootstrap_servers)
    recloop = create_app(settings, clock)
    worker = faust.Worker(
        recloop.app,
        loglevel=settings.worker.log_level,
        quiet=True,
        redirect_stdouts=False,
    )
    try:
        worker.execute_from_commandline()
    finally:
        recloop.follower.stop()
        recloop.checkpoint()
