"""Running a worker process: topics first, then the Faust worker until it is stopped."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click
import faust

from pipeline.app import Clock, create_app, utc_now
from pipeline.settings import Settings
from pipeline.topics import TopicsNotReady, create_topics, wait_for_topics

log = logging.getLogger(__name__)


class StateDirError(click.ClickException):
    """The state directory cannot be created or written (the CLI prints one line, exit 1)."""


def check_state_dir(state_dir: Path) -> None:
    """Create the state directory if needed and prove it writable, or say why not.

    Faust, RocksDB and the checkpoints would each fail later, and loudly; one clear
    error before anything starts is what an operator needs.

    Raises:
        StateDirError: naming the directory and the operating system's reason.

    """
    probe = state_dir / f".recloop-write-probe-{os.getpid()}"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise StateDirError(
            f"the state directory {state_dir} is not writable ({reason}); "
            "point worker.state_dir at a writable directory with free space"
        ) from None


def run_worker(settings: Settings, clock: Clock = utc_now) -> None:
    """Create any missing topics, then run one worker in this process until SIGTERM/SIGINT.

    The worker starts once the broker's metadata lists every topic (:func:`wait_for_topics`).

    Args:
        settings: with ``kafka.bootstrap_servers`` resolved.
        clock: the wall clock handed to the agents.

    Raises:
        StateDirError: ``worker.state_dir`` cannot be written.
        click.ClickException: the broker does not list the topics within two minutes.

    """
    assert settings.kafka.bootstrap_servers is not None
    check_state_dir(settings.worker.state_dir)
    create_topics(settings.kafka, settings.kafka.bootstrap_servers)
    # a consumer group that joins before the broker lists the topics is assigned nothing
    try:
        wait_for_topics(
            settings.kafka,
            settings.kafka.bootstrap_servers,
            on_wait=lambda missing: log.warning(
                "waiting for the broker to list %s (it may still be loading its partitions)",
                ", ".join(missing),
            ),
        )
    except TopicsNotReady as exc:
        raise click.ClickException(str(exc)) from None
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
        try:
            recloop.checkpoint()
        except OSError as exc:  # e.g. the disk filled up: the previous checkpoint stays
            log.error(
                "could not save the ranking model and item index to %s (%s); "
                "the previous checkpoint is kept",
                settings.worker.state_dir,
                exc.strerror or exc,
            )
