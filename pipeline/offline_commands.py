r"""Offline commands: import a public dataset as events, evaluate recommenders on an event log.

Both work on files only (no broker). ``pipeline.cli`` registers them::

    recloop import movielens ../shared/datasets/ml-100k --out var/ml-100k
    recloop evaluate var/ml-100k/events.jsonl --items var/ml-100k/items.jsonl \\
        --report var/ml-100k/report.html

See ``docs/evaluation.md`` for the protocol and the figures.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import click

from operators.evaluation import (
    OPTIONAL_RECOMMENDERS,
    RECOMMENDER_NAMES,
    EvaluationConfig,
    evaluate,
    measure_log,
    read_catalog,
    read_events,
    standard_recommenders,
    write_report,
)
from operators.feedback_loop import LoopConfig
from operators.movielens import MovieLensFormatError, RatingMapping, import_movielens
from schemas.events import Event


@click.group("import")
def import_group() -> None:
    """Turn public datasets into recloop events and catalog records (JSON lines)."""


@import_group.command("movielens")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder for events.jsonl and items.jsonl (created).")  # fmt: skip
@click.option("--rating-events/--no-rating-events", default=True, show_default=True,
              help="Also emit each explicit rating event after its implicit events.")  # fmt: skip
def import_movielens_command(directory: Path, out_dir: Path, rating_events: bool) -> None:
    """Import the MovieLens release in DIRECTORY (100K's u.data or a ratings.csv release).

    The MovieLens licence forbids redistribution: keep OUT outside the repository.
    """
    try:
        counts = import_movielens(directory, out_dir, RatingMapping(emit_rating=rating_events))
    except (FileNotFoundError, MovieLensFormatError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(counts.as_dict()))


def _loop_settings(ctx: click.Context) -> tuple[LoopConfig, float]:
    """The worker's operator settings and model learning rate under ``recloop``, else defaults."""
    from pipeline.settings import Settings

    settings = ctx.find_object(Settings)
    if settings is None:
        return LoopConfig(), 0.05
    from pipeline.app import loop_config

    return loop_config(settings), settings.ranking.model_learning_rate


def _counted(events: Iterable[Event], advance: Callable[[int], None]) -> Iterator[Event]:
    for event in events:
        advance(1)
        yield event


@click.command("evaluate")
@click.argument("events_path", metavar="EVENTS",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))  # fmt: skip
@click.option("--items", "items_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The catalog as JSON lines (items.jsonl).")  # fmt: skip
@click.option("--report", "report_path", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Also write an HTML report (Recall@k over time) here.")  # fmt: skip
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N interactions (for a MovieLens import: ratings).")  # fmt: skip
@click.option("--only", default=None,
              help="Comma-separated subset of: "
              f"{', '.join(RECOMMENDER_NAMES + OPTIONAL_RECOMMENDERS)}.")  # fmt: skip
@click.option("--seed", type=int, default=42, show_default=True,
              help="Seed of the models with randomness.")  # fmt: skip
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Length of each evaluated list.")  # fmt: skip
@click.option("--curve-every", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Positives per point of the Recall curve.")  # fmt: skip
@click.option("--snapshots/--no-snapshots", default=True, show_default=True,
              help="recloop builds every event's snapshot as the worker does; without, the "
              "same lists in a fraction of the time.")  # fmt: skip
@click.pass_context
def evaluate_command(
    ctx: click.Context, events_path: Path, items_path: Path, report_path: Path | None,
    limit: int | None, only: str | None, seed: int, k: int, curve_every: int, snapshots: bool,
) -> None:  # fmt: skip
    """Replay EVENTS test-then-train through every recommender; print one JSON document.

    All recommenders see the same events in one pass; each positive (a rating of 4 or
    more) is scored before any recommender learns from it (see docs/evaluation.md).
    """
    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    items = read_catalog(items_path)
    size = measure_log(read_events(events_path, limit))  # a first, cheap pass
    try:
        config, learning_rate = _loop_settings(ctx)
        recommenders = standard_recommenders(
            items, seed, size.split_event, config, names, learning_rate, snapshots
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--only") from exc
    protocol = EvaluationConfig(k=k, curve_every=curve_every, split_event=size.split_event)
    with click.progressbar(length=size.events, label="evaluating", file=sys.stderr) as bar:
        events = _counted(read_events(events_path, limit), bar.update)
        result = evaluate(events, recommenders, items, protocol)
    document = result.as_dict()
    document["inputs"] = {
        "events": str(events_path), "items": str(items_path), "limit": limit, "seed": seed,
        "snapshots": snapshots,
    }  # fmt: skip
    if report_path is not None:
        write_report(document, report_path)
    click.echo(json.dumps(document, indent=2))
