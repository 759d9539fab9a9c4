r"""Offline commands: import a public dataset as events, evaluate recommenders on an event log.

Both work on files only (no broker). ``pipeline.cli`` registers them::

    recloop import movielens ../shared/datasets/ml-100k --out var/ml-100k
    recloop evaluate var/ml-100k/events.jsonl --items var/ml-100k/items.jsonl \\
        --report var/ml-100k/report.html

See ``docs/evaluation.md`` for the protocol and the figures.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click

from operators.evaluation import (
    OPTIONAL_RECOMMENDERS,
    RECOMMENDER_NAMES,
    EvaluationConfig,
    EvaluationResult,
    evaluate,
    measure_log,
    merge_results,
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


@dataclass(frozen=True)
class _Run:
    """One evaluation over a log file, for some of the recommenders (picklable)."""

    events_path: Path
    items_path: Path
    limit: int | None
    names: tuple[str, ...]
    seed: int
    config: LoopConfig
    learning_rate: float
    snapshots: bool
    protocol: EvaluationConfig

    def __call__(self, advance: Callable[[int], None] | None = None) -> EvaluationResult:
        """Build the recommenders, replay the log through them; ``advance`` per event.

        A split still to be worked out (``split_at_half``) is measured first when a
        recommender needs it from the start (the static model freezes there); else the
        run works it out at the end, with no first pass over the log.
        """
        items = read_catalog(self.items_path)
        protocol = self.protocol
        if protocol.split_at_half and _NEEDS_SPLIT.intersection(self.names):
            protocol = protocol.measured(measure_log(read_events(self.events_path, self.limit)))
        recommenders = standard_recommenders(
            items, self.seed, protocol.split_event, self.config, self.names,
            self.learning_rate, self.snapshots,
        )  # fmt: skip
        events = read_events(self.events_path, self.limit)
        return evaluate(events if advance is None else _counted(events, advance),
                        recommenders, items, protocol)  # fmt: skip


#: The recommenders built with the split (``static_cooccurrence`` freezes there).
_NEEDS_SPLIT = frozenset({"static_cooccurrence"})


def _count_lines(path: Path) -> int:
    """The non-blank lines of a file (the events of a log), without parsing them."""
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def _watching(
    advance: Callable[[int], None], beside: list[Future[EvaluationResult]]
) -> Callable[[int], None]:
    """``advance``, raising the first failure of a run ``beside`` as soon as it is seen.

    Without a first pass over the log, a bad line is first found by the run that reads
    it first; the baselines' run measures the log before it replays it, so its failure
    stops the whole evaluation within seconds instead of at the end.
    """
    seen = 0

    def advanced(n: int) -> None:
        nonlocal seen
        advance(n)
        seen += n
        if seen >= _WATCH_EVERY:
            seen = 0
            for future in beside:
                if future.done() and future.exception() is not None:
                    future.result()  # raises it

    return advanced


#: Events between two looks at the runs beside the first.
_WATCH_EVERY = 4096


def _split(names: list[str], jobs: int) -> list[list[str]]:
    """The recommenders per process: recloop's (the slowest) apart from the baselines."""
    heavy = [n for n in names if n.startswith("recloop")]
    light = [n for n in names if not n.startswith("recloop")]
    if jobs < 2 or not heavy or not light:
        return [names]
    return [heavy, light]


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
@click.option("--snapshots/--no-snapshots", default=False, show_default=True,
              help="recloop also builds every event's snapshot as the worker does: "
              "nearly the same lists (the index syncs more often), about 2.5x slower.")  # fmt: skip
@click.option("--jobs", type=click.IntRange(min=1), default=min(2, os.cpu_count() or 1),
              show_default="2, or 1 on one CPU",
              help="Processes: with 2, the baselines replay the log beside recloop.")  # fmt: skip
@click.pass_context
def evaluate_command(
    ctx: click.Context, events_path: Path, items_path: Path, report_path: Path | None,
    limit: int | None, only: str | None, seed: int, k: int, curve_every: int, snapshots: bool,
    jobs: int,
) -> None:  # fmt: skip
    """Replay EVENTS test-then-train through every recommender; print one JSON document.

    All recommenders see the same events in one pass; each positive (a rating of 4 or
    more) is scored before any recommender learns from it (see docs/evaluation.md).
    """
    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    read_catalog(items_path)  # a bad catalog fails before any work
    # the split at half the interactions: with a limit, measured in a first pass (a
    # prefix: cheap); else each run works it out (see _Run), so the replay starts at once
    size = measure_log(read_events(events_path, limit)) if limit is not None else None
    config, learning_rate = _loop_settings(ctx)
    known = RECOMMENDER_NAMES + OPTIONAL_RECOMMENDERS
    unknown = sorted(set(names or ()) - set(known))
    if unknown:  # checked before any work
        raise click.BadParameter(
            f"unknown recommenders {unknown}; known: {', '.join(known)}", param_hint="--only"
        )
    wanted = [n for n in known if n in (names if names is not None else RECOMMENDER_NAMES)]
    protocol = (
        EvaluationConfig(k=k, curve_every=curve_every, split_event=size.split_event)
        if size is not None
        else EvaluationConfig(k=k, curve_every=curve_every, split_at_half=True)
    )
    runs = [
        _Run(events_path, items_path, limit, tuple(group), seed, config, learning_rate,
             snapshots, protocol)
        for group in _split(wanted, jobs)
    ]  # fmt: skip
    # the first run (recloop's) here with the progress bar, the others in processes beside
    with ProcessPoolExecutor(
        max_workers=max(1, len(runs) - 1), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        beside = [pool.submit(run) for run in runs[1:]]
        length = size.events if size is not None else _count_lines(events_path)
        with click.progressbar(length=length, label="evaluating", file=sys.stderr) as bar:
            here = runs[0](_watching(bar.update, beside))
        result = merge_results([here, *(f.result() for f in beside)], wanted)
    document = result.as_dict()
    document["inputs"] = {
        "events": str(events_path), "items": str(items_path), "limit": limit, "seed": seed,
        "snapshots": snapshots, "processes": len(runs),
    }  # fmt: skip
    if report_path is not None:
        write_report(document, report_path)
    click.echo(json.dumps(document, indent=2))
