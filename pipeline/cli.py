"""The ``recloop`` command. The entry point is the only place that reads the environment."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TextIO

import click

from pipeline.settings import Settings, SettingsError, load_settings


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


@click.group()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    envvar="RECLOOP_CONFIG",
    help="YAML settings file (env: RECLOOP_CONFIG).",
)
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """recloop: a real-time recommendation feedback loop on Kafka."""
    try:
        ctx.obj = load_settings(config_path, os.environ)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def _resolved(ctx: click.Context) -> Settings:
    from pipeline.broker import resolve_bootstrap
    from pipeline.embedded_kafka import BrokerError

    try:
        return resolve_bootstrap(_settings(ctx))
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a worker: the events and items agents with their tables."""
    from pipeline.worker import run_worker

    run_worker(_resolved(ctx))


@cli.group()
def topics() -> None:
    """Manage recloop's topics."""


@topics.command("create")
@click.pass_context
def topics_create(ctx: click.Context) -> None:
    """Create recloop's topics (partitions and replication from the settings)."""
    from pipeline.topics import create_topics

    settings = _resolved(ctx)
    assert settings.kafka.bootstrap_servers is not None
    created = create_topics(settings.kafka, settings.kafka.bootstrap_servers)
    click.echo(f"created {len(created)} topics" + (f": {', '.join(created)}" if created else ""))


@cli.command()
@click.argument("source", type=click.File("r"), default="-")
@click.option(
    "--kind",
    type=click.Choice(["events", "items"]),
    default="events",
    help="events (keyed by user_id) or catalog items (keyed by item_id).",
)
@click.pass_context
def produce(ctx: click.Context, source: TextIO, kind: str) -> None:
    """Validate JSON lines from SOURCE (a file, or - for stdin) and produce the valid ones."""
    from pipeline.clients import produce_lines
    from pipeline.replay import validation_limits

    settings = _resolved(ctx)
    assert settings.kafka.bootstrap_servers is not None
    topic = settings.kafka.topic(kind)
    report = produce_lines(source, topic, kind, settings.kafka.bootstrap_servers,  # type: ignore[arg-type]
                           validation_limits(settings.limits))  # fmt: skip
    click.echo(json.dumps(report.as_dict()))
    if report.rejected or report.delivery_failures:
        sys.exit(1)


@cli.command()
@click.argument("user_ids", metavar="USER...", nargs=-1, required=True)
@click.pass_context
def forget(ctx: click.Context, user_ids: tuple[str, ...]) -> None:
    """Erase users: a forget event each; the worker deletes profile and snapshot."""
    from pipeline.sdk import DeliveryError, EventProducer

    settings = _resolved(ctx)
    try:
        with EventProducer(settings) as producer:
            sent = [producer.forget(user_id) for user_id in user_ids]
    except (ValueError, DeliveryError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"forget": [d.record.event_id for d in sent], "users": list(user_ids)}))


@cli.command()
@click.option("--user", "user_id", default=None, help="Only this user's snapshots.")
@click.option("--from-beginning/--from-now", default=True, help="Start offset.")
@click.option("--group", "group_id", default=None, help="Consumer group (none: no commits).")
@click.option(
    "--idle-timeout",
    type=float,
    default=None,
    help="Stop after this many seconds without a snapshot.",
)
@click.pass_context
def consume(
    ctx: click.Context,
    user_id: str | None,
    from_beginning: bool,
    group_id: str | None,
    idle_timeout: float | None,
) -> None:
    """Tail the snapshots topic as JSON lines."""
    from pipeline.clients import snapshot_line, tail_snapshots

    settings = _resolved(ctx)
    assert settings.kafka.bootstrap_servers is not None
    for snapshot in tail_snapshots(
        settings.kafka.bootstrap_servers,
        settings.kafka.topic("snapshots"),
        group_id,
        from_beginning,
        user_id,
        idle_timeout,
    ):
        click.echo(snapshot_line(snapshot))


@cli.command()
@click.argument("action", type=click.Choice(["start", "stop", "status", "reset", "fetch"]))
@click.pass_context
def kafka(ctx: click.Context, action: str) -> None:
    """The embedded single-node Kafka broker (used when no bootstrap servers are set)."""
    from pipeline.embedded_kafka import default_cache_dir
    from pipeline.embedded_kafka import main as kafka_main

    cache = _settings(ctx).cache_dir or default_cache_dir()
    sys.exit(kafka_main([action, "--cache-dir", str(cache)]))


@cli.group()
def schemas() -> None:
    """The event contract as JSON Schema."""


@schemas.command("export")
@click.argument(
    "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("schemas/json")
)
def schemas_export(directory: Path) -> None:
    """Write the JSON Schema files generated from the Python records."""
    from schemas.export import write_json_schemas

    for path in write_json_schemas(directory):
        click.echo(str(path))


@cli.command()
@click.option("--users", type=int, default=None, help="Simulated users [default: 32; short: 16].")
@click.option("--rounds", type=int, default=None, help="Lists each user acts on [25; short: 16].")
@click.option("--items", type=int, default=None, help="Catalog size [400; short: 200].")
@click.option("--seed", type=int, default=7, show_default=True, help="Seeds catalog and users.")
@click.option(
    "--drift-at",
    type=float,
    default=None,
    help="Share of the rounds after which some users' tastes drift [0.6; short: 0.5].",
)
@click.option("--no-drift", is_flag=True, help="Keep every user's taste.")
@click.option(
    "--rate",
    type=float,
    default=None,
    help="Events per second, all users together [60]; 0: as fast as the worker answers.",
)
@click.option(
    "--duration",
    type=float,
    default=None,
    help="Time budget of the run in seconds [160]; users stop early enough to keep it.",
)
@click.option("--short", is_flag=True, help="A CI-sized run (about half a minute).")
@click.option("--keep-topics", is_flag=True, help="Leave the run's topics on the broker.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the report goes [var/demo/<run>].",
)
@click.pass_context
def demo(
    ctx: click.Context,
    users: int | None,
    rounds: int | None,
    items: int | None,
    seed: int,
    drift_at: float | None,
    no_drift: bool,
    rate: float | None,
    duration: float | None,
    short: bool,
    keep_topics: bool,
    out_dir: Path | None,
) -> None:
    """The closed loop: a worker, simulated users acting on its snapshots, a report."""
    from dataclasses import replace

    from pipeline.demo import SHORT, DemoOptions, options_with, run_demo

    options = options_with(
        SHORT if short else DemoOptions(),
        users=users, rounds=rounds, items=items, seed=seed, drift_at=drift_at, out_dir=out_dir,
        duration_s=duration,
    )  # fmt: skip
    if no_drift:
        options = replace(options, drift_at=None)
    if rate is not None:
        options = replace(options, rate=rate or None)
    if keep_topics:
        options = replace(options, keep_topics=True)
    try:
        options.check()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    sys.exit(run_demo(_resolved(ctx), options))


def _register_offline_commands() -> None:
    # `recloop import movielens` and `recloop evaluate`: the Kafka-free offline tools
    from pipeline.offline_commands import evaluate_command, import_group

    cli.add_command(import_group)
    cli.add_command(evaluate_command)


_register_offline_commands()


def _register_replay_command() -> None:
    # `recloop replay LOG`: backfill the events topic from an event log (docs/replay.md)
    from pipeline.replay import replay_command

    cli.add_command(replay_command)


_register_replay_command()


def main() -> None:
    """Console entry point."""
    cli(prog_name="recloop")
