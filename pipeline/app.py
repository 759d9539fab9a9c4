"""The Faust application, built by a factory: no module-level app, consumer or table.

Two agents, both thin (decode, call operators, write state, emit):

* ``events``: validates each event (invalid ones go to the dead-letter topic with the
  reason headers and the original bytes), applies it to the user's profile in the
  RocksDB-backed ``users`` table (changelogged), publishes the user's new snapshot and
  forwards per-item feedback keyed by item id.
* ``items``: owns item state, partitioned by item id; folds in catalog records and
  feedback and republishes the item's state on the compacted item-state topic, which
  every worker follows into its in-memory catalog (see :mod:`pipeline.catalog_follower`).

The events agent also keeps each user's latest snapshot in the ``snapshots`` table (for
``GET /users/{id}/recommendations``, :mod:`pipeline.web`) and counts every event in the
live metrics (:mod:`operators.live_metrics`), which a timer publishes to the metrics
topic and ``GET /metrics`` exports (:mod:`pipeline.metrics`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import faust
import faust.streams
from pydantic import TypeAdapter, ValidationError

from operators.catalog import (
    Catalog,
    ItemFeedback,
    ItemParams,
    ItemState,
    expiry_of,
    fold_item_feedback,
    snapshot_expired,
    sweep_interval,
)
from operators.deescalation import Adjustment, DeescalationParams
from operators.embedding import EmbeddingParams
from operators.feedback_loop import Applied, LoopConfig, answer, apply_event, current_snapshot
from operators.files import write_atomic
from operators.index import IndexLoadError, IndexParams, ItemIndex
from operators.live_metrics import LiveMetrics, LiveMetricsParams
from operators.model import RankingModel
from operators.profile import ProfileLimits, UserProfile, next_snapshot_version
from operators.ranking import RankingParams
from operators.signals import SignalRules
from operators.validation import InvalidEvent, ValidationLimits, decode_event, reason_for
from pipeline.catalog_follower import CATCH_UP_SLICE, CatalogFollower
from pipeline.metrics import MetricsExporter, consumer_lag, encode_record, metrics_record, worker_id
from pipeline.offsets import KafkaRecordFetcher, Progress, RecordFetcher, processing
from pipeline.settings import Section, Settings, WorkerSettings
from pipeline.topics import partition_of, replica_config, topic_specs
from pipeline.web import HttpApi, decode_latest, encode_latest
from schemas.catalog import parse_item
from schemas.events import Event, Forget, Id
from schemas.snapshot import Snapshot, parse_snapshot, snapshot_to_json

log = logging.getLogger(__name__)

_ITEM_ID: TypeAdapter[str] = TypeAdapter(Id)
#: How often a worker applies the item state its follower queued, whether or not events
#: arrive (a batch of events applies it first too): an item change reaches the catalog
#: (ranking, the HTTP API, the metrics) of a worker with no traffic within 50 ms, and an
#: idle worker wakes 20 times a second for it, not 100
_FOLLOW_INTERVAL_S = 0.05
#: how often the expiry timer wakes: a worker sweeps at its first wake (so one restarted
#: more often than the sweep interval still sweeps), then once per interval
_EXPIRY_WAKE_S = 60.0
#: Items a worker's first index build writes per batch: the index's lock is held for one
#: batch (a quarter of a second or so), when a health check or a scrape may wait for it.
_BUILD_BATCH = 1024


def _item_key(key: bytes) -> str:
    """A catalog key as an item id: UTF-8 and the contract's rule for ids, else refused."""
    try:
        return _ITEM_ID.validate_python(key.decode())
    except (UnicodeDecodeError, ValidationError) as exc:
        raise InvalidEvent(
            "key_mismatch", f"key {key[:64]!r} is not an item id (UTF-8, the rule for ids)"
        ) from exc


Clock = Callable[[], datetime]
Headers = Sequence[tuple[str, bytes]]


#: The dead-letter reason of an event in another partition than its key's (the worker's
#: own check; the others come from :func:`~operators.validation.decode_event`).
WRONG_PARTITION = "wrong_partition"

#: The most of a dead letter's key and value that goes as it is: with its headers (under
#: 3 KiB) it stays below the 1,000,000-byte request limit of Faust's producer and the
#: broker's default record limit (1 MiB), whatever the dead-letter topic's settings.
DEAD_LETTER_BODY_MAX = 960 * 1024
#: A key longer than that (with a longer value) is cut to this many bytes.
_DEAD_KEY_KEPT = 1024


def dead_letter_body(
    key: bytes | None, value: bytes | None
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The key and value a dead letter carries for an input's, and headers saying how.

    Unchanged when they fit :data:`DEAD_LETTER_BODY_MAX` (every input below the broker's
    default record limit does). Longer ones (a broker set to take bigger records) are
    cut, each cut stated with the original's size and SHA-256; the whole record stays
    at the offset the dead letter names. A record with neither key nor value (which
    Kafka's clients refuse to send) gets an empty value and ``recloop.dlq.value: null``.
    Without this, the send would fail, the input would never be acknowledged, and the
    worker would stop on it again after every restart.
    """
    if key is None and value is None:
        return None, b"", [("recloop.dlq.value", b"null")]
    headers: list[tuple[str, bytes]] = []
    if len(key or b"") + len(value or b"") <= DEAD_LETTER_BODY_MAX:
        return key, value, headers
    if key is not None and len(key) > _DEAD_KEY_KEPT:
        headers += _cut("key", key)
        key = key[:_DEAD_KEY_KEPT]
    room = DEAD_LETTER_BODY_MAX - len(key or b"")
    if value is not None and len(value) > room:
        headers += _cut("value", value)
        value = value[:room]
    return key, value, headers


def _cut(part: str, whole: bytes) -> list[tuple[str, bytes]]:
    return [
        (f"recloop.dlq.{part}_size", str(len(whole)).encode()),
        (f"recloop.dlq.{part}_sha256", hashlib.sha256(whole).hexdigest().encode()),
    ]


#: Addresses a server listens on everywhere at: no other worker can reach it there.
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def advertised_host(worker: WorkerSettings) -> str:
    """The host this worker's HTTP API is reached at by the others (Faust's ``web_host``).

    Faust makes it the worker's ``canonical_url``, the address every member shares with
    the group and the key of the assignment's table of owners: a wildcard there makes
    all workers one address, so each would claim (or lose) the others' users.
    """
    if worker.web_advertised_host:
        return worker.web_advertised_host
    return socket.gethostname() if worker.web_host in _WILDCARDS else worker.web_host


def utc_now() -> datetime:
    """The default wall clock."""
    return datetime.now(UTC)


def exit_at_once(exc: BaseException) -> None:
    """Stop the worker process now, with the reason, without Faust's orderly shutdown.

    The orderly shutdown acknowledges and commits events nobody processed. Exiting at
    once is a crash like ``kill -9``, which the fault suite proves loses nothing: the
    events since the last commit come back and are applied once.
    """
    log.critical("cannot process events, stopping at once", exc_info=exc)
    print(f"recloop: stopping: cannot process events: {exc}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(1)


async def index_in_batches(catalog: Catalog, batch: int = _BUILD_BATCH) -> int:
    """:meth:`Catalog.sync_index`, with the vectors written in batches from a thread.

    For a worker's first build: it takes tens of seconds at 100,000 items (about 0.2 ms
    an insert), hnswlib releases the GIL while it inserts, and the index's lock is held
    for one batch at a time, so the event loop goes on serving health checks, scrapes and
    the item agents meanwhile. The caller makes sure nothing else writes to the index
    until it returns (the catalog is not changed meanwhile either). Returns how many
    items were (re-)indexed or removed.
    """
    loop = asyncio.get_running_loop()
    writes = catalog.take_index_writes()
    for start in range(0, len(writes.ids), batch):
        end = start + batch
        await loop.run_in_executor(
            None, catalog.index.upsert_many, writes.ids[start:end], writes.vectors[start:end]
        )
    return catalog.count_index_writes(writes)


class Emitter(Protocol):
    """Where the agents' output goes: Kafka in production, a list in pipeline tests."""

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> None:
        """Send one record to one of recloop's topics (full name)."""


class CatalogSource(Protocol):
    """Where a worker's view of every item comes from (the item-state topic in production)."""

    @property
    def catalog(self) -> Catalog:
        """The items as known now."""

    def start(self) -> None:
        """Begin following."""

    async def wait_caught_up(self, timeout_s: float = 60.0) -> bool:
        """Wait until what existed at start has been applied."""

    def drain(self, limit: int | None = None) -> int:
        """Apply what arrived since the last call (at most ``limit`` records)."""

    def stop(self) -> None:
        """Stop following."""


class FaustEmitter:
    """Sends through the Faust app's producer."""

    def __init__(self, app: faust.App) -> None:
        self._app = app
        self._topics: dict[str, Any] = {}

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> None:
        """Send one record (buffered by the producer; Faust flushes before committing)."""
        channel = self._topics.get(topic)
        if channel is None:
            channel = self._app.topic(topic, key_serializer="raw", value_serializer="raw")
            self._topics[topic] = channel
        await channel.send(key=key, value=value, headers=list(headers) or None)


T = TypeVar("T")


def _params(cls: type[T], section: Section) -> T:
    """The operator parameters of ``cls`` whose names the settings section shares."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return cls(**{f.name: getattr(section, f.name) for f in fields})


def loop_config(settings: Settings) -> LoopConfig:
    """The operators' configuration, derived once from the settings."""
    r, e = settings.ranking, settings.embedding
    return LoopConfig(
        signals=SignalRules(dwell_long_ms=r.dwell_long_ms, dwell_short_ms=r.dwell_short_ms),
        limits=_params(ProfileLimits, settings.limits),
        ranking=_params(RankingParams, r),
        items=ItemParams(
            popularity_half_life_s=r.popularity_half_life_s,
            max_neighbours=r.max_neighbours,
            embedding=_params(EmbeddingParams, settings.embedding),
            uncatalogued_ttl_s=settings.limits.uncatalogued_item_ttl_s,
        ),
        covisit_window=r.covisit_window,
        deescalation=_params(DeescalationParams, settings.deescalation),
        index=IndexParams(
            m=e.index_m, ef_construction=e.index_ef_construction, ef_search=e.index_ef_search,
            seed=e.seed, reindex_below=e.reindex_below,
        ),
    )  # fmt: skip


@dataclass
class WorkerStats:
    """Counters a worker keeps about what it processed."""

    #: events read from the events topic, by outcome (a forget is processed)
    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    #: every record sent to the dead-letter topic (catalog and item feedback too), by reason
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    item_updates: int = 0
    #: states of items without a catalog record deleted for want of feedback (TTL)
    items_expired: int = 0
    forgotten: int = 0
    republished: int = 0
    #: events whose snapshot was superseded by a later one of the same batch
    coalesced: int = 0


_Step = tuple[Event, UserProfile | None, UserProfile, tuple[Adjustment, ...], float | None]


@dataclass
class _Pending:
    """One user's events of a batch, applied to their profile but not answered yet."""

    #: the profile before them (``None``: a new user)
    before: UserProfile | None
    #: the user's latest snapshot before them (``encode_latest``), as the live metrics need
    previous: bytes | None
    #: the profile after the newest, its snapshot version counted
    profile: UserProfile | None = None
    #: the newest event and its Faust event (whose partition the table writes go to)
    event: Event | None = None
    source: Any = None
    #: each event with the profile before and after it, its adjustments and Kafka time
    steps: list[_Step] = field(default_factory=list)
    feedback: list[ItemFeedback] = field(default_factory=list)
    audits: list[tuple[str, Adjustment]] = field(default_factory=list)
    #: what de-escalation changed on the newest event (then it is answered at once)
    adjustments: tuple[Adjustment, ...] = ()

    def add(self, source: Any, event: Event, profile: UserProfile, applied: Applied,
            produced_at: float | None) -> None:  # fmt: skip
        """Count one more applied event; ``profile`` is the user's state after it."""
        before = self.profile if self.steps else self.before
        self.steps.append((event, before, profile, applied.adjustments, produced_at))
        self.source, self.event, self.profile = source, event, profile
        self.feedback.extend(applied.feedback)
        self.audits.extend((event.event_id, a) for a in applied.adjustments)
        self.adjustments = applied.adjustments


class Recloop:
    """One worker's Faust app with its topics, tables, agents and catalog view.

    Build it with :func:`create_app`; nothing connects until the worker starts.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        emitter: Emitter | None = None,
        catalog_source: CatalogSource | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        record_fetcher: RecordFetcher | None = None,
    ) -> None:
        bootstrap = settings.kafka.bootstrap_servers
        if bootstrap is None:
            raise ValueError("resolve bootstrap_servers (or start the embedded broker) first")
        self.settings = settings
        self.clock = clock
        #: what a failure to process a batch (a full disk, say) does: stop at once
        self.on_fatal = on_fatal or exit_at_once
        self.config = loop_config(settings)
        self.limits = ValidationLimits(
            max_event_bytes=settings.limits.max_event_bytes,
            max_future_skew_s=settings.limits.max_future_skew_s,
            min_event_year=settings.limits.min_event_year,
        )
        self.stats = WorkerStats()
        self.model_path = settings.worker.state_dir / "ranking-model.bin"
        self.model = self._load_model()
        self._checkpointed_updates = self.model.updates
        #: the model's likes learned and drifts when the worker started (its counters
        #: count from there: a checkpoint restored after a crash is older than its last)
        self.model_at_start = (self.model.updates, self.model.drifts)
        self.index_path = settings.worker.state_dir / "item-index.bin"
        self.catalog = self.config.new_catalog(self._load_index())
        self._saved_index_changes = self.catalog.index_changes
        #: one save at a time: the timer's (in a thread) and the final one (at stop)
        self._saving = threading.Lock()
        kafka = settings.kafka
        self.topic_names = {
            spec.name.removeprefix(kafka.topic_prefix): spec.name for spec in topic_specs(kafka)
        }
        self.app = faust.App(
            settings.worker.app_id,
            broker=f"kafka://{bootstrap}",
            store=settings.worker.store,
            datadir=str(settings.worker.state_dir),
            autodiscover=False,
            web_enabled=settings.worker.web_enabled,
            # Faust's own /table/ and /router/ views would serve every profile with no
            # token; the API in pipeline/web.py routes and authorises by itself
            web_tables_enabled=False,
            web_port=settings.worker.web_port,
            web_host=advertised_host(settings.worker),
            web_bind=settings.worker.web_host,  # Faust binds 0.0.0.0 unless told
            topic_partitions=kafka.partitions,
            topic_replication_factor=kafka.replication_factor,
            topic_allow_declare=True,
            broker_commit_interval=settings.worker.commit_interval_s,
            broker_session_timeout=settings.worker.session_timeout_s,
            broker_heartbeat_interval=settings.worker.heartbeat_interval_s,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            table_standby_replicas=0,
        )
        self.emitter: Emitter = emitter if emitter is not None else FaustEmitter(self.app)
        self.follower: CatalogSource = catalog_source or CatalogFollower(
            bootstrap, self.topic_names["item-state"], kafka.partitions, self.catalog
        )
        self._starting = asyncio.Lock()
        self.events_topic = self._raw_topic("events")
        self.catalog_topic = self._raw_topic("items")
        self.item_feedback_topic = self._raw_topic("item-feedback")
        self.users = self._table("users")
        self.items = self._table("items")
        # the last offset each agent finished per input partition (pipeline/offsets.py)
        self.progress = Progress(
            self.app, self._table("progress"), record_fetcher or KafkaRecordFetcher(bootstrap)
        )
        self.events_agent = self.app.agent(self.events_topic, name="events")(self._events_agent)
        self.app.timer(settings.worker.checkpoint_s, name="checkpoint")(self._checkpoint_timer)
        self.app.timer(_FOLLOW_INTERVAL_S, name="follow-items", traced=False)(self._follow_timer)
        if self.config.items.uncatalogued_ttl_s > 0:
            wake = min(_EXPIRY_WAKE_S, sweep_interval(self.config.items))
            self.app.timer(wake, name="expire-items", traced=False)(self._expiry_timer)
        self._next_sweep = -math.inf  # monotonic seconds
        self.catalog_agent = self.app.agent(self.catalog_topic, name="catalog")(self._catalog_agent)
        self.item_feedback_agent = self.app.agent(self.item_feedback_topic, name="item-feedback")(
            self._item_feedback_agent
        )
        self._init_serving()

    # -- serving and live metrics (pipeline/web.py, pipeline/metrics.py) -----------------
    def _init_serving(self) -> None:
        """The latest snapshot per user, the live metrics, their timer and the HTTP API."""
        settings = self.settings
        #: whether the events agent has its catalog (set once the follower caught up)
        self.ready = False
        # the latest snapshot per user (surface, list, JSON: pipeline.web.encode_latest),
        # changelogged like the users table, so the owner of a user can always serve it
        self.snapshots = self._table("snapshots")
        m = settings.metrics
        self.live_metrics = LiveMetrics(
            LiveMetricsParams(
                cold_start_events=m.cold_start_events, window_s=m.window_s,
                window_lists=m.window_lists, reengage_within=m.reengage_within,
                max_users=m.max_users, signals=self.config.signals,
            )
        )  # fmt: skip
        self.exporter = MetricsExporter(self)
        self._last_metrics: dict[str, Any] | None = None
        self._metrics_failed = False
        self.app.timer(m.interval_s, name="metrics")(self._metrics_timer)
        self.http: HttpApi | None = None
        if settings.worker.web_enabled:
            self.http = HttpApi(self)
            self.http.register(self.app)

    def consumer_lag(self) -> int | None:
        """Messages of the events topic this worker has not read yet (``None``: unknown)."""
        return consumer_lag(self.app, self.topic_names["events"])

    async def _metrics_timer(self) -> None:
        """Publish this worker's figures to the metrics topic (keyed by worker id)."""
        record = metrics_record(self, self._last_metrics)
        await self.emitter.send(
            self.topic_names["metrics"], worker_id(self).encode(), encode_record(record)
        )
        self._last_metrics = record

    def _observe(
        self,
        event: Event,
        before: UserProfile | None,
        after: UserProfile,
        adjustments: tuple[Adjustment, ...],
        previous: bytes | None,
        snapshot: Snapshot,
        emitted_at: datetime,
        produced_at: float | None,
        new_list: bool = True,
    ) -> None:
        """Count one applied event in the live metrics; a failure there never stops events.

        ``snapshot`` answers it (with the user's later events of the batch, when they were
        coalesced: then only the last one counts a ``new_list``).
        """
        try:
            shown = decode_latest(previous)[1] if previous else None
            now = emitted_at.timestamp()
            self.live_metrics.observe(
                event, before=before, after=after, shown=shown, snapshot=snapshot,
                adjustments=adjustments, catalog=self.follower.catalog, now=now,
                latency_s=now - produced_at if produced_at is not None else None,
                new_list=new_list,
            )  # fmt: skip
        except Exception:
            self.exporter.metrics_errors.inc()
            if not self._metrics_failed:  # once: the counter tells how often
                self._metrics_failed = True
                log.exception("live metrics failed on event %s", event.event_id)

    def _table(self, name: str) -> Any:
        """A table of bytes by string key, its changelog replicated as recloop's topics are.

        Faust declares the changelog itself, so it needs ``min.insync.replicas`` passed
        here; without it ``acks=all`` could count one copy of the state that must survive
        the loss of a machine.
        """
        kafka = self.settings.kafka
        return self.app.Table(
            name, key_type=str, value_type=bytes, partitions=kafka.partitions,
            extra_topic_configs=replica_config(kafka),
        )  # fmt: skip

    def _raw_topic(self, name: str) -> Any:
        return self.app.topic(
            self.topic_names[name],
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.settings.kafka.partitions,
        )

    # -- the ranking model: one per worker, learning from the likes it processes ---------
    def _load_model(self) -> RankingModel:
        learning_rate = self.settings.ranking.model_learning_rate
        if self.model_path.exists():
            try:
                model = RankingModel.restore(self.model_path.read_bytes())
                if model.learning_rate != learning_rate:  # the setting changed since
                    model.set_learning_rate(learning_rate)
                return model
            except Exception:  # a damaged checkpoint costs the learning, never the worker
                log.exception("ranking model checkpoint %s unreadable; starting afresh",
                              self.model_path)  # fmt: skip
        return RankingModel(learning_rate=learning_rate)

    # -- the item index: one per worker, following the replicated item state -------------
    def _load_index(self) -> ItemIndex:
        """The index saved last, when it is intact and built as the settings ask; else empty.

        An empty index is filled from item state as the catalog follower catches up
        (one batch), so a missing, corrupt or stale file only costs the rebuild.
        """
        e, params = self.settings.embedding, self.config.index
        if self.index_path.exists():
            try:
                index = ItemIndex.load(self.index_path, dim=e.dim)
            except IndexLoadError as exc:
                log.warning("item index unusable (%s); rebuilding it from item state", exc)
            else:
                if params.built(index):
                    return index
                log.warning("item index %s was built with other settings; rebuilding it",
                            self.index_path)  # fmt: skip
        return params.new_index(e.dim)

    def checkpoint(self) -> None:
        """Save the ranking model and the item index atomically into the state directory.

        A save the timer started in a thread finishes first (at shutdown the timer is
        cancelled, its thread is not), so this one's rename is the last.
        """
        data = self.model.snapshot()
        self._write_model(data)
        self._checkpointed_updates = self.model.updates
        self.catalog.sync_index()  # what the follower applied since the last query
        changes = self.catalog.index_changes
        self._save_index()
        self._saved_index_changes = changes

    def _write_model(self, data: bytes) -> None:
        with self._saving:
            write_atomic(self.model_path, lambda out: out.write(data))

    def _save_index(self) -> None:
        with self._saving:
            self.catalog.index.save(self.index_path)

    async def _checkpoint_timer(self) -> None:
        """Save what changed since the last save: the model and the item index.

        The model is copied on the event loop (so no event is half in it) and written,
        fsynced and renamed in a thread. The index is saved in a thread under its own
        lock, which gives the save a consistent cut; a query that needs the index waits
        for it. The loop is not free meanwhile either: hnswlib takes the graph's image
        holding the GIL, which stalls the loop for about that long (tens of
        milliseconds at 100,000 items, docs/retrieval.md).
        """
        if not self.ready:  # the index is being built (and nothing was learned yet)
            return
        loop = asyncio.get_running_loop()
        if self.model.updates != self._checkpointed_updates:
            updates, data = self.model.updates, self.model.snapshot()
            if await self._saved(loop, "ranking model", self._write_model, data):
                self._checkpointed_updates = updates
        self.catalog.sync_index()  # on the loop, where the catalog changes
        if self.catalog.index_changes != self._saved_index_changes:
            changes = self.catalog.index_changes
            if await self._saved(loop, "item index", self._save_index):
                self._saved_index_changes = changes

    async def _saved(
        self, loop: asyncio.AbstractEventLoop, what: str, save: Callable[..., None], *args: Any
    ) -> bool:
        """Run one save of the timer in a thread; ``False`` when the disk refused it.

        A full disk costs the checkpoint, never the worker: an exception out of a timer
        takes Faust's orderly shutdown, which commits events nobody processed. The
        previous file stays (the writes are atomic) and the next tick tries again.
        """
        try:
            await loop.run_in_executor(None, save, *args)
        except OSError as exc:
            log.error("could not save the %s to %s (%s); the previous checkpoint is kept, "
                      "the next one tries again", what, self.settings.worker.state_dir,
                      exc.strerror or exc)  # fmt: skip
            return False
        return True

    # -- the events agent ---------------------------------------------------------------
    async def _ensure_catalog(self) -> None:
        """Start following the item state on the first call (once); then take what came."""
        if not self.ready:
            async with self._starting:  # callers arriving meanwhile wait for the one start
                if not self.ready:
                    await self._start_catalog()
                    return
        self.follower.drain()

    async def _follow_timer(self) -> None:
        """Apply the item state the follower queued, on a worker whose events are quiet too.

        Before the worker is ready the start applies what arrives (and the first index
        build needs the catalog unchanged). A large backlog is applied a slice at a time,
        the loop turning in between. A failure stops the worker at once, as one in the
        events agent's drain does, never through Faust's orderly shutdown.
        """
        if not self.ready:
            return
        try:
            while self.follower.drain(CATCH_UP_SLICE) == CATCH_UP_SLICE:
                await asyncio.sleep(0)
        except Exception as exc:
            self.on_fatal(exc)

    async def _start_catalog(self) -> None:
        loop = asyncio.get_running_loop()
        # the loop keeps serving meanwhile (health checks, scrapes, the item agents): the
        # follower waits for the topic's metadata in a thread, the index is written from one
        await loop.run_in_executor(None, self.follower.start)
        if not await self.follower.wait_caught_up():
            log.warning("catalog follower did not catch up in time; ranking on what it has")
        catalog = self.follower.catalog
        catalog.prune_index()  # a saved index may hold items removed since
        await index_in_batches(catalog)  # nothing else writes to it until ready
        self.ready = True
        # a line the demo and the tests wait for; logging levels must not hide it
        print(
            f"recloop: events agent ready ({len(catalog)} items, {len(catalog.index)} indexed)",
            file=sys.stderr,
            flush=True,
        )

    async def _events_agent(self, stream: Any) -> None:
        await self._ensure_catalog()
        await self._in_batches(stream, self.handle_events)

    async def _in_batches(
        self,
        stream: Any,
        handle: Callable[[Sequence[Any]], Awaitable[None]],
        window_ms: float | None = None,
        complete: bool = True,
    ) -> None:
        """Feed an agent's stream to ``handle`` in batches; acknowledge only what it did.

        Faust acknowledges an event once its agent moves past it, even when the agent
        failed on it, and commits past a single unacknowledged event at the head of a
        partition: both lose events. So acks are manual, on a stream that never acks by
        itself (``noack``), made only after ``handle`` succeeded for the whole batch and the
        batch's changelog records left Faust's buffer (:meth:`_hand_over_changelogs`); when
        it fails, :attr:`on_fatal` stops the process at once, before anything else can be
        acknowledged or committed: what was not committed comes back on restart and is
        applied once (docs/guarantees.md).

        With ``complete``, offsets Faust skipped are read back and processed first, and
        each partition's last offset is noted in the ``progress`` table
        (:mod:`pipeline.offsets`); a compacted input (the catalog) has gaps by design.
        """
        worker = self.settings.worker
        window_s = (window_ms if window_ms is not None else worker.batch_window_ms) / 1000
        manual = stream.noack()
        async for taken in manual.noack_take(worker.batch_max, window_s):
            batch, refilled = list(taken), set[int]()
            try:
                if complete:
                    refill = await self.progress.complete(taken)
                    batch, refilled = refill.batch, refill.refilled
                await handle(batch)
                if complete:
                    self.progress.record(batch)
                await self._hand_over_changelogs()
            except Exception as exc:
                self.on_fatal(exc)
                raise  # never acknowledge what failed
            for event in batch:
                if id(event) not in refilled:  # Faust never delivered those
                    await manual.ack(event)

    async def _hand_over_changelogs(self) -> None:
        """Wait until the table changelog records written so far left Faust's buffer.

        Table writes queue their changelog records in Faust's producer buffer. Before it
        commits offsets, Faust flushes that buffer and then the Kafka producer, but its
        buffer flush gives up after 0.1 s without progress (a busy event loop) and the
        commit goes ahead: a crash right after it loses the changelog records of events
        whose offsets are committed, and a worker that takes the partition over restores
        state without them. Acknowledging a batch only once the buffer is empty closes
        that window; the producer flush the commit awaits in full covers the rest.
        """
        buffer = self.app.producer.buffer
        while buffer.size:
            await buffer.flush()

    async def handle_events(self, batch: Sequence[Any]) -> None:
        """Process a batch of the events topic's messages (the body of the ``events`` agent).

        Each event is validated and folded into its user's profile in order. A user's
        list is ranked once, after their last event of the batch (a burst coalesces into
        one snapshot, whose version still counts every event), except after an event
        that de-escalation reacted to: its snapshot, notice and prompt go out at once.
        Each message's Kafka timestamp starts the event-to-snapshot latency the live
        metrics measure.
        """
        await self._ensure_catalog()
        pending: dict[str, _Pending] = {}
        for source in batch:
            await self._fold(source, pending)
        for user_id in list(pending):
            await self._answer(pending.pop(user_id))

    async def _fold(self, source: Any, pending: dict[str, _Pending]) -> None:
        """Apply one Faust event's event to its user's pending state (or dead-letter it)."""
        message = source.message
        key, raw = message.key, source.value
        try:
            event = decode_event(raw, key=key, now=self.clock(), limits=self.limits)
            self._check_partition(event.user_id, message.partition)
        except InvalidEvent as exc:
            await self._dead_letter(key, raw, exc, message.topic, message.partition,
                                    message.offset)  # fmt: skip
            return
        user_id = event.user_id
        waiting = pending.get(user_id)
        if isinstance(event, Forget):
            if waiting is not None:  # what came before still goes out, then is erased
                await self._answer(pending.pop(user_id))
            with processing(source):
                await self._forget(user_id, event.event_id, event.timestamp)
            self.stats.processed += 1  # an event read and applied, as every other
            return
        if waiting is None:
            with processing(source):  # a table read looks in the event's partition
                stored, previous = self.users.get(user_id), self.snapshots.get(user_id)
            profile = UserProfile.restore(stored) if stored is not None else None
        else:
            stored, profile = None, waiting.profile
        applied = apply_event(event, profile, self.follower.catalog, self.config, self.model)
        if applied.duplicate:
            self.stats.duplicates += 1
            if (
                waiting is None
                and stored is not None
                and applied.profile.recent_event_ids[-1:] == (event.event_id,)
            ):
                with processing(source):
                    await self._republish(event, applied.profile, stored)
            return
        if waiting is None:
            waiting = pending[user_id] = _Pending(profile, previous)
        waiting.add(source, event, next_snapshot_version(applied.profile), applied,
                    message.timestamp)  # fmt: skip
        if applied.adjustments:  # de-escalation answers at once, with its notice
            await self._answer(pending.pop(user_id))

    def _check_partition(self, user_id: str, partition: int) -> None:
        """Refuse an event outside its user's partition (``wrong_partition``).

        The user's state lives in the partition murmur2 of the key names; applied where
        it arrived, the event would start a second, partial profile of the user there (a
        librdkafka producer partitions with CRC32 unless told ``murmur2_random``).
        """
        partitions = self.settings.kafka.partitions
        expected = partition_of(user_id.encode(), partitions)
        if partition != expected:
            raise InvalidEvent(
                WRONG_PARTITION,
                f"key {user_id!r} belongs in partition {expected} of {partitions} (murmur2, "
                f"the Java client's and Faust's partitioner), not {partition}: produce with "
                "partitioner=murmur2_random (docs/sdk.md)",
            )

    async def _answer(self, waiting: _Pending) -> None:
        """Rank the user's list after their pending events; write the tables; publish.

        Both tables are written before anything is sent, with no await between: a crash
        leaves the profile and its snapshot both written or both not (see _republish).
        """
        event = waiting.event
        assert event is not None and waiting.profile is not None
        profile, snapshot = answer(
            event, waiting.profile, waiting.adjustments, self.follower.catalog, self.config,
            self.clock(), self.model,
        )  # fmt: skip
        user_id = event.user_id
        user_key = user_id.encode()
        snapshot_json = snapshot_to_json(snapshot)
        surface = event.surface
        with processing(waiting.source):
            self.users[user_id] = profile.snapshot()
            self.snapshots[user_id] = encode_latest(surface, snapshot, snapshot_json)
        await self.emitter.send(self.topic_names["snapshots"], user_key, snapshot_json)
        emitted_at = self.clock()
        for feedback in waiting.feedback:
            await self.emitter.send(
                self.topic_names["item-feedback"], feedback.item_id.encode(), feedback.to_json()
            )
        for audited, adjustment in waiting.audits:
            record = adjustment.to_record(user_id, audited)
            await self.emitter.send(
                self.topic_names["audit"],
                user_key,
                json.dumps(record, separators=(",", ":")).encode(),
            )
        self.stats.processed += len(waiting.steps)
        self.stats.coalesced += len(waiting.steps) - 1
        for n, (applied_event, before, after, adjustments, produced_at) in enumerate(waiting.steps):
            last = n == len(waiting.steps) - 1
            self._observe(applied_event, before, profile if last else after, adjustments,
                          waiting.previous, snapshot, emitted_at, produced_at,
                          new_list=last)  # fmt: skip

    async def _republish(self, event: Event, profile: UserProfile, stored: bytes) -> None:
        """Send again what the user's latest event produced: a crash may have lost it.

        After a crash the events since the last commit come back. The user's state may
        already hold the latest of them (the tables are written before the outputs leave),
        so it is a duplicate, yet its snapshot and changelog record may never have been
        sent. Re-sending the stored snapshot, byte for byte, and re-writing the profile
        (its changelog record) makes those outputs at-least-once. When the stored snapshot
        is not that event's (the crash, a full disk say, came between the two table
        writes), it is ranked anew from the profile for ``event`` (that latest event, come
        back), on its surface, as it was first ranked. Snapshots of earlier events were
        superseded by this one anyway; their item feedback is not re-sent.
        """
        user_id = profile.user_id
        self.users[user_id] = stored
        latest = self.snapshots.get(user_id)
        snapshot_json = decode_latest(latest)[2] if latest is not None else None
        if snapshot_json is None or parse_snapshot(snapshot_json).version != (
            profile.snapshot_version
        ):
            snapshot = current_snapshot(
                event, profile, self.follower.catalog, self.config, self.clock(), self.model
            )
            snapshot_json = snapshot_to_json(snapshot)
            surface = event.surface
            latest = encode_latest(surface, snapshot, snapshot_json)
        self.snapshots[user_id] = latest  # its changelog record may be lost too
        await self.emitter.send(self.topic_names["snapshots"], user_id.encode(), snapshot_json)
        self.stats.republished += 1

    async def _forget(self, user_id: str, event_id: str, event_time: datetime) -> None:
        """Erase a user's profile, embedding and snapshot; audit the erasure.

        Profile and latest snapshot leave their tables (tombstones on the changelogs), a
        tombstone replaces the user's snapshot on the compacted snapshots topic. Item
        statistics and the ranking model keep only what they aggregate over users.
        """
        for table in (self.users, self.snapshots):
            if user_id in table:
                del table[user_id]
        self.live_metrics.forget(user_id)
        user_key = user_id.encode()
        await self.emitter.send(self.topic_names["snapshots"], user_key, None)
        record = {"user_id": user_id, "event_id": event_id, "event_time": event_time.isoformat(),
                  "rule": "forgotten", "reason": None, "basis": [event_id], "key": "user",
                  "before": None, "after": None, "expires_at": None}  # fmt: skip
        await self.emitter.send(
            self.topic_names["audit"], user_key, json.dumps(record, separators=(",", ":")).encode()
        )
        self.stats.forgotten += 1

    async def _dead_letter(
        self,
        key: bytes | None,
        raw: bytes | None,
        exc: InvalidEvent,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        if topic == self.topic_names["events"]:  # the event figures count events only
            self.stats.dead_lettered += 1
        self.stats.dead_letter_reasons[exc.reason] = (
            self.stats.dead_letter_reasons.get(exc.reason, 0) + 1
        )
        # at most 2000 bytes, cut between characters: a header that is not UTF-8 fails
        # the consumer that decodes it
        detail = exc.detail.encode("utf-8", "replace")[:2000].decode("utf-8", "ignore")
        headers = [
            ("recloop.dlq.reason", exc.reason.encode()),
            ("recloop.dlq.detail", detail.encode()),
            ("recloop.dlq.topic", topic.encode()),
            ("recloop.dlq.partition", str(partition).encode()),
            ("recloop.dlq.offset", str(offset).encode()),
            ("recloop.dlq.received_at", self.clock().isoformat().encode()),
        ]
        key, raw, cut = dead_letter_body(key, raw)
        await self.emitter.send(self.topic_names["dead-letters"], key, raw, headers + cut)

    # -- the items agents ---------------------------------------------------------------
    # Two agents, one per input, share the items table. Each read-modify-write below has
    # no await inside it, so on the event loop they never interleave for one item.
    async def _catalog_agent(self, stream: Any) -> None:
        await self._in_batches(stream, self.handle_catalog_records, complete=False)

    async def handle_catalog_records(self, batch: Sequence[Any]) -> None:
        """Fold a batch of catalog records, one at a time and in order."""
        for source in batch:
            message = source.message
            with processing(source):
                await self.handle_catalog_record(
                    message.key, source.value, message.topic, message.partition, message.offset
                )

    async def _item_feedback_agent(self, stream: Any) -> None:
        # a longer window: each item's state goes out once per batch, however many users
        # liked it meanwhile, and every worker re-indexes it once
        await self._in_batches(
            stream, self.handle_item_feedback, self.settings.worker.item_batch_window_ms
        )

    def _item_state(self, item_id: str) -> ItemState:
        return self._stored_item(item_id) or ItemState(item_id=item_id)

    def _stored_item(self, item_id: str) -> ItemState | None:
        stored = self.items.get(item_id)
        return ItemState.restore(stored) if stored is not None else None

    def expired_item_ids(self, now: datetime) -> list[str]:
        """The ids, among the items this worker owns, whose state has outlived its TTL.

        States without a catalog record (feedback for an id never catalogued, or after
        its tombstone) would otherwise stay on every worker for good. One pass over the
        items table without awaiting, reading each state's bytes, not parsing them
        (docs/architecture.md gives the cost); the owner checks each one again.
        """
        params, now_t = self.config.items, now.timestamp()
        return [
            item_id for item_id, raw in self.items.items()
            if raw is not None and snapshot_expired(raw, now_t, params)
        ]  # fmt: skip

    async def _expiry_timer(self) -> None:
        """Ask the owners (this worker, unless a partition moves) to delete expired items.

        Through the item-feedback topic, so the agent that folds the item's feedback
        decides, in order with it: a like or a catalog record that came meanwhile keeps
        the state.
        """
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + sweep_interval(self.config.items)
        now = self.clock()
        for item_id in self.expired_item_ids(now):
            key = item_id.encode()
            await self.emitter.send(
                self.topic_names["item-feedback"], key, expiry_of(item_id, now).to_json()
            )

    async def _publish_item(self, key: bytes, state: ItemState | None) -> None:
        """Write the item's state (``None``: delete it) to the items table and item-state."""
        if state is None:
            item_id = key.decode()
            if item_id in self.items:
                del self.items[item_id]
            value = None
        else:
            value = self.items[state.item_id] = state.snapshot()
        self.stats.item_updates += 1
        await self.emitter.send(self.topic_names["item-state"], key, value)

    async def handle_catalog_record(
        self, key: bytes | None, raw: bytes | None, topic: str, partition: int, offset: int
    ) -> None:
        """Fold one catalog record into the item's state and republish it; a tombstone deletes."""
        try:
            if key is None:
                raise InvalidEvent("key_mismatch", "catalog records must be keyed by item_id")
            record = parse_item(raw) if raw is not None else None
            if record is not None and record.item_id.encode() != key:
                raise InvalidEvent("key_mismatch", f"key {key[:64]!r} is not {record.item_id!r}")
            if record is None:  # a tombstone names its item by the key alone
                _item_key(key)
        except ValidationError as exc:
            reason, detail = reason_for(exc, raw or b"")  # only a record is validated
            invalid = InvalidEvent(reason, f"catalog record: {detail}")
            await self._dead_letter(key, raw, invalid, topic, partition, offset)
            return
        except InvalidEvent as exc:
            await self._dead_letter(key, raw, exc, topic, partition, offset)
            return
        assert key is not None
        # a tombstone: the item is gone, and so is what was learned about it; its state
        # leaves the items table and, by a tombstone on item-state, every worker's catalog
        # (``available: false`` withdraws an item and keeps its state)
        state = None if record is None else self._item_state(key.decode()).with_record(record)
        await self._publish_item(key, state)

    async def handle_item_feedback(self, batch: Sequence[Any]) -> None:
        """Fold a batch of users' signals into the items' states; republish each item once."""
        decoded: list[tuple[Any, bytes, ItemFeedback]] = []
        for source in batch:
            key, raw = source.message.key, source.value
            if key is None or raw is None:
                log.error("item feedback without key or value; recloop never writes such records")
                continue
            try:
                feedback = ItemFeedback.from_json(raw)
                if feedback.item_id.encode() != key:  # it would change another item
                    raise InvalidEvent(
                        "key_mismatch",
                        f"item-feedback record: key {key[:64]!r} is not {feedback.item_id!r}",
                    )
                decoded.append((source, key, feedback))
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                # recloop writes these records, yet one from a newer worker (a kind this
                # one does not know, in a rolling upgrade) or a damaged one must not stop
                # the worker: unacknowledged, it would stop it again after every restart.
                # Sent before any item state is read: the catalog agent may run during
                # the await, and a state read before it would undo its change
                message = source.message
                invalid = (
                    exc
                    if isinstance(exc, InvalidEvent)
                    else InvalidEvent(
                        "schema_violation", f"item-feedback record: {type(exc).__name__}: {exc}"
                    )
                )
                await self._dead_letter(key, raw, invalid, message.topic, message.partition,
                                        message.offset)  # fmt: skip
        by_item: dict[str, list[tuple[Any, bytes, ItemFeedback]]] = {}
        for entry in decoded:
            by_item.setdefault(entry[2].item_id, []).append(entry)
        # each item read, folded and written with no await in between: the catalog agent
        # runs while a send is awaited, and a state read before that would undo its change
        for item_id, entries in by_item.items():
            with processing(entries[0][0]):
                stored = self._stored_item(item_id)
            records = (feedback for _, _, feedback in entries)
            state, expired = fold_item_feedback(stored, records, self.config.items)
            self.stats.items_expired += expired
            if state is stored:  # nothing changed (only expiries, none applied)
                continue
            source, key, _ = entries[-1]
            with processing(source):
                await self._publish_item(key, state)


def create_app(
    settings: Settings,
    clock: Clock = utc_now,
    emitter: Emitter | None = None,
    catalog_source: CatalogSource | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
    record_fetcher: RecordFetcher | None = None,
) -> Recloop:
    """Build a worker's app from the settings (connects to nothing until started).

    Args:
        settings: with ``kafka.bootstrap_servers`` resolved.
        clock: wall clock for snapshots and validation (timezone-aware).
        emitter: where agents send their output; the app's Kafka producer by default.
        catalog_source: this worker's view of every item; the item-state topic by default.
        on_fatal: called when an agent cannot process a batch; exits the process at once
            by default (:func:`exit_at_once`).
        record_fetcher: reads back records Faust skipped; a consumer of the broker by
            default (:class:`pipeline.offsets.KafkaRecordFetcher`).

    """
    return Recloop(settings, clock, emitter, catalog_source, on_fatal, record_fetcher)
