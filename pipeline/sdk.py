"""The Python SDK: produce events and catalog records, consume recommendation snapshots.

:class:`EventProducer` builds events from typed helpers (``click``, ``skip``, ``dwell``,
``not_relevant``, ``impression``, ``rating``, ``preference``), validates each one exactly
as a worker will (schema, size, event time, key) before anything is produced, and sends
it with confluent-kafka (idempotence, ``acks=all``, murmur2 keys: see
:func:`pipeline.clients.producer_config`). Every send returns a :class:`Delivery` handle;
failures also reach an optional per-call callback, and :meth:`EventProducer.flush` /
:meth:`EventProducer.close` raise :class:`DeliveryError` while any record is undelivered.

:class:`SnapshotConsumer` iterates the snapshots topic; :class:`LatestSnapshots` keeps the
latest snapshot per user in memory for lookups.

Example:
    >>> from pipeline.sdk import EventProducer, LatestSnapshots, SnapshotConsumer
    >>> with EventProducer(bootstrap_servers="127.0.0.1:9092") as producer:  # doctest: +SKIP
    ...     sent = producer.click("alice", "movie-7", context={"surface": "home"})
    >>> with SnapshotConsumer(bootstrap_servers="127.0.0.1:9092") as consumer:  # doctest: +SKIP
    ...     latest = LatestSnapshots(consumer)
    ...     snap = latest.wait_for("alice", lambda s: s.source_event_id == sent.record.event_id)

"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypedDict, TypeVar, Unpack, get_args

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from pydantic import ValidationError

from operators.validation import ValidationLimits, decode_event
from pipeline.clients import producer_config
from pipeline.settings import KafkaSettings, LimitSettings, Settings
from schemas.catalog import ItemRecord, item_to_json, parse_item
from schemas.events import (
    Click,
    Context,
    Dwell,
    Forget,
    Impression,
    NotRelevant,
    NotRelevantReason,
    Preference,
    PreferenceAction,
    Rating,
    Skip,
    event_to_json,
)
from schemas.snapshot import Snapshot, parse_snapshot

__all__ = [
    "Delivery",
    "DeliveryError",
    "EventOptions",
    "EventProducer",
    "ItemEventOptions",
    "LatestSnapshots",
    "SnapshotConsumer",
    "SnapshotError",
    "SnapshotMessage",
    "Start",
]

log = logging.getLogger(__name__)

R = TypeVar("R")
#: Any one event model (a constrained variable: ``send(Click(...))`` returns ``Delivery[Click]``).
E = TypeVar("E", Click, Skip, Dwell, NotRelevant, Rating, Impression, Preference, Forget)

#: Where a :class:`SnapshotConsumer` starts: the earliest or latest offset when its group
#: has no committed offset, or explicit offsets by partition (these override commits).
Start = Literal["earliest", "latest"] | Mapping[int, int]

#: Producer settings the SDK keeps fixed: they are what makes a send safe and well placed.
_GUARANTEES = ("enable.idempotence", "acks", "partitioner")
#: librdkafka's other name for one of them
_ALIASES = {"request.required.acks": "acks"}
#: values librdkafka reads as the same setting
_SAME = {"-1": "all", "true": "True"}


def _refuse_weaker(extra: Mapping[str, object], base: Mapping[str, object]) -> None:
    """Raise ``ValueError`` when ``extra`` would change a guarantee, by any of its names.

    librdkafka also reads topic settings from a ``default.topic.config`` dict.
    """
    nested = extra.get("default.topic.config")
    given = [*extra.items(), *(nested.items() if isinstance(nested, Mapping) else ())]
    for name, value in given:
        guarded = _ALIASES.get(name, name)
        if guarded not in _GUARANTEES:
            continue
        wanted = str(base[guarded])
        if _SAME.get(str(value), str(value)) != wanted:
            raise ValueError(f"{name}={value!r} is not allowed: the SDK keeps {wanted!r}")


def _wall_clock() -> datetime:
    return datetime.now(UTC)


def _new_event_id() -> str:
    return str(uuid.uuid4())


def _kafka_target(
    settings: Settings | KafkaSettings | None,
    bootstrap_servers: str | None,
    topic_prefix: str | None,
) -> tuple[str, KafkaSettings, LimitSettings]:
    """(bootstrap servers, topic layout, limits) from settings or explicit values."""
    if settings is not None and (bootstrap_servers is not None or topic_prefix is not None):
        raise ValueError("give either settings or bootstrap_servers/topic_prefix, not both")
    limits = LimitSettings()
    if isinstance(settings, Settings):
        kafka, limits = settings.kafka, settings.limits
    elif isinstance(settings, KafkaSettings):
        kafka = settings
    else:
        kafka = KafkaSettings(
            bootstrap_servers=bootstrap_servers,
            topic_prefix=KafkaSettings().topic_prefix if topic_prefix is None else topic_prefix,
        )
    if not kafka.bootstrap_servers:
        raise ValueError(
            "no bootstrap servers: pass bootstrap_servers, or settings resolved with "
            "pipeline.broker.resolve_bootstrap (which starts the embedded broker)"
        )
    return kafka.bootstrap_servers, kafka, limits


# -- producing ------------------------------------------------------------------------------


class DeliveryError(Exception):
    """Records were not delivered: the broker refused them, or they timed out or stayed queued.

    Attributes:
        failures: the records that failed, each with its ``error``.
        undelivered: how many records were still unconfirmed when waiting stopped.

    """

    def __init__(
        self, message: str, failures: Sequence[Delivery[Any]] = (), undelivered: int = 0
    ) -> None:
        super().__init__(message)
        self.failures = list(failures)
        self.undelivered = undelivered


class Delivery(Generic[R]):
    """The outcome of one send: pending until the broker answers, then delivered or failed.

    ``record`` is what was sent (the validated event, catalog record, or ``None`` for a
    tombstone), so a caller can learn the generated ``event_id``. Outcomes arrive while the
    producer is polled: by any later send, :meth:`EventProducer.poll`, ``flush`` or
    :meth:`result`.
    """

    def __init__(self, topic: str, key: bytes, record: R, poll: Callable[[float], object]) -> None:
        self.topic = topic
        self.key = key
        self.record = record
        self.partition: int | None = None
        self.offset: int | None = None
        self.error: KafkaError | None = None
        self._done = False
        self._poll = poll

    def done(self) -> bool:
        """Whether the broker has answered (delivered or failed)."""
        return self._done

    @property
    def failed(self) -> bool:
        """Whether the record is known not to have been delivered."""
        return self._done and self.error is not None

    def describe(self) -> str:
        """One line for error messages: topic, key and outcome."""
        where = f"{self.topic} key {self.key[:64]!r}"
        if not self._done:
            return f"{where}: not confirmed yet"
        if self.error is not None:
            return f"{where}: {self.error.str()} ({self.error.name()})"
        return f"{where}: delivered to partition {self.partition} at offset {self.offset}"

    def result(self, timeout_s: float = 30.0) -> Self:
        """Wait for the broker's answer (polling the producer); returns ``self`` once delivered.

        Raises:
            DeliveryError: the record was not delivered.
            TimeoutError: no answer within ``timeout_s``.

        """
        deadline = time.monotonic() + timeout_s
        while not self._done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no delivery report within {timeout_s:g}s: {self.describe()}")
            self._poll(min(remaining, 0.1))
        if self.error is not None:
            raise DeliveryError(f"not delivered: {self.describe()}", [self])
        return self

    def _settle(self, error: KafkaError | None, partition: int, offset: int) -> None:
        self.error = error
        self.partition = partition
        self.offset = offset if error is None else None
        self._done = True


DeliveryCallback = Callable[[Delivery[Any]], None]


class EventOptions(TypedDict, total=False):
    """Optional fields of every event helper (ids and times are generated when absent)."""

    event_id: str
    timestamp: datetime
    context: Context | Mapping[str, str]
    on_delivery: DeliveryCallback


class ItemEventOptions(EventOptions, total=False):
    """Optional fields of the helpers for events about one item."""

    recommendation_id: str
    position: int


class EventProducer:
    """Validates and produces events (keyed by ``user_id``) and catalog records (by ``item_id``).

    Args:
        settings: resolved :class:`~pipeline.settings.Settings` (its kafka section and its
            limits) or just a :class:`~pipeline.settings.KafkaSettings`; or leave it out and
            pass ``bootstrap_servers`` (and ``topic_prefix``, default ``"recloop."``).
        clock: wall clock for generated timestamps and the event-time checks (timezone-aware).
        new_event_id: makes an event id when none is given (default: a uuid4).
        flush_timeout_s: how long ``close()`` (and ``flush()`` by default) waits.
        config: extra confluent-kafka producer settings (e.g. ``message.timeout.ms``).
            Idempotence, ``acks=all`` and the murmur2 partitioner cannot be changed. Topic
            auto-creation is off by default, so a wrong prefix fails rather than creating
            one-partition topics.

    Raises:
        ValueError: no bootstrap servers, or a setting that would weaken the guarantees.

    """

    def __init__(
        self,
        settings: Settings | KafkaSettings | None = None,
        *,
        bootstrap_servers: str | None = None,
        topic_prefix: str | None = None,
        clock: Callable[[], datetime] = _wall_clock,
        new_event_id: Callable[[], str] = _new_event_id,
        flush_timeout_s: float = 30.0,
        config: Mapping[str, object] | None = None,
    ) -> None:
        bootstrap, kafka, limits = _kafka_target(settings, bootstrap_servers, topic_prefix)
        base = producer_config(bootstrap)
        extra = dict(config or {})
        _refuse_weaker(extra, base)
        self.events_topic = kafka.topic("events")
        self.items_topic = kafka.topic("items")
        wanted = {
            f.name for f in dataclasses.fields(ValidationLimits)
        }  # the checks a worker applies
        self._limits = ValidationLimits(**limits.model_dump(include=wanted))
        self._clock = clock
        self._new_event_id = new_event_id
        self.flush_timeout_s = flush_timeout_s
        self._producer = Producer({**base, "allow.auto.create.topics": False, **extra})
        self._failures: list[Delivery[Any]] = []
        #: what ``on_delivery`` callbacks raised (each is also logged), oldest first
        self.callback_errors: list[Exception] = []
        self._pending = 0  # records produced whose delivery report has not been served
        self._closed = False

    # -- the typed helpers --------------------------------------------------------------
    def click(
        self, user_id: str, item_id: str, **options: Unpack[ItemEventOptions]
    ) -> Delivery[Click]:
        """Send a ``click``: the user opened the item."""
        return self._send_new(Click, options, user_id=user_id, item_id=item_id)

    def skip(
        self, user_id: str, item_id: str, **options: Unpack[ItemEventOptions]
    ) -> Delivery[Skip]:
        """Send a ``skip``: the user passed over the item."""
        return self._send_new(Skip, options, user_id=user_id, item_id=item_id)

    def dwell(
        self, user_id: str, item_id: str, dwell_ms: float, **options: Unpack[ItemEventOptions]
    ) -> Delivery[Dwell]:
        """Send a ``dwell``: the user spent ``dwell_ms`` milliseconds on the item."""
        return self._send_new(Dwell, options, user_id=user_id, item_id=item_id, dwell_ms=dwell_ms)

    def not_relevant(
        self,
        user_id: str,
        item_id: str,
        reason: NotRelevantReason | None = None,
        **options: Unpack[ItemEventOptions],
    ) -> Delivery[NotRelevant]:
        """Send a ``not_relevant``: the user said the item is not for them (optional reason)."""
        return self._send_new(NotRelevant, options, user_id=user_id, item_id=item_id, reason=reason)

    def rating(
        self, user_id: str, item_id: str, value: float, **options: Unpack[ItemEventOptions]
    ) -> Delivery[Rating]:
        """Send a ``rating`` from 0 to 5."""
        return self._send_new(Rating, options, user_id=user_id, item_id=item_id, value=value)

    def impression(
        self,
        user_id: str,
        item_ids: Sequence[str],
        recommendation_id: str | None = None,
        **options: Unpack[EventOptions],
    ) -> Delivery[Impression]:
        """Send an ``impression``: the items the user was shown, in slot order.

        Raises:
            TypeError: ``item_ids`` is one string (a list of one id is ``[item_id]``).

        """
        if isinstance(item_ids, str | bytes):  # list() would make an id of every character
            raise TypeError("item_ids must be a list of item ids, not one string")
        return self._send_new(
            Impression,
            options,
            user_id=user_id,
            item_ids=list(item_ids),
            recommendation_id=recommendation_id,
        )

    def preference(
        self,
        user_id: str,
        action: PreferenceAction,
        *,
        item_id: str | None = None,
        category: str | None = None,
        creator: str | None = None,
        prompt_id: str | None = None,
        **options: Unpack[EventOptions],
    ) -> Delivery[Preference]:
        """Send a ``preference``: the user steered.

        ``more_like`` needs ``item_id``, the category actions ``category``, the creator
        actions ``creator``; the other actions take none of them.
        """
        return self._send_new(
            Preference,
            options,
            user_id=user_id,
            action=action,
            item_id=item_id,
            category=category,
            creator=creator,
            prompt_id=prompt_id,
        )

    def forget(self, user_id: str, **options: Unpack[EventOptions]) -> Delivery[Forget]:
        """Send a ``forget``: the worker erases the user's profile and snapshot."""
        return self._send_new(Forget, options, user_id=user_id)

    # -- sending ------------------------------------------------------------------------
    def send(self, event: E, *, on_delivery: DeliveryCallback | None = None) -> Delivery[E]:
        """Validate one event as a worker would, then produce it keyed by its ``user_id``.

        Raises:
            operators.validation.InvalidEvent: (a ``ValueError``) with the reason a worker
                would give, e.g. ``too_large`` or ``timestamp_in_future``; nothing is sent.
            DeliveryError: the client refused the record at once (over its
                ``message.max.bytes``, or its local queue stayed full for
                ``flush_timeout_s`` while this call waited for room).

        """
        value = event_to_json(event)
        key = event.user_id.encode()
        decode_event(value, key=key, now=self._clock(), limits=self._limits)
        return self._produce(self.events_topic, key, value, event, on_delivery)

    def send_item(
        self, record: ItemRecord, *, on_delivery: DeliveryCallback | None = None
    ) -> Delivery[ItemRecord]:
        """Validate one catalog record, then produce it keyed by its ``item_id``.

        Raises:
            pydantic.ValidationError: (a ``ValueError``) the record breaks the contract.
            DeliveryError: the client refused the record at once.

        """
        value = item_to_json(record)
        parse_item(value)  # a record built with model_construct() skipped validation
        return self._produce(self.items_topic, record.item_id.encode(), value, record, on_delivery)

    def remove_item(
        self, item_id: str, *, on_delivery: DeliveryCallback | None = None
    ) -> Delivery[None]:
        """Produce a tombstone for ``item_id``: the item leaves recommendations."""
        if not item_id:
            raise ValueError("item_id must not be empty")
        return self._produce(self.items_topic, item_id.encode(), None, None, on_delivery)

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports (callbacks, handles); returns how many were served."""
        return int(self._producer.poll(timeout_s))

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every record sent so far is delivered.

        Raises:
            DeliveryError: some record failed since the last flush (even one already seen
                through a callback or a handle), or some are still unconfirmed after
                ``timeout_s`` (default ``flush_timeout_s``); those stay queued.

        """
        timeout = self.flush_timeout_s if timeout_s is None else timeout_s
        self._producer.flush(timeout)
        self._raise_failures(self._pending, f"after {timeout:g}s")

    def close(self) -> None:
        """Flush, then drop whatever is still unconfirmed; raises if anything was lost.

        Raises:
            DeliveryError: records failed, or were still unconfirmed after
                ``flush_timeout_s`` (their handles and callbacks see the purge error).

        """
        if self._closed:
            return
        self._closed = True
        self._producer.flush(self.flush_timeout_s)
        remaining = self._pending
        if remaining:
            self._producer.purge()
            self._producer.flush(0)  # serves the purged records' reports
        self._raise_failures(remaining, f"after {self.flush_timeout_s:g}s, when closing")

    def __len__(self) -> int:
        """Records sent whose delivery has not been reported yet."""
        return self._pending

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:  # the body failed: still flush, but let the body's error be the one raised
            self.close()
        except DeliveryError as lost:
            exc.add_note(f"and when closing the producer: {lost}")

    # -- internals ----------------------------------------------------------------------
    def _send_new(
        self, model: type[E], options: Mapping[str, Any], **fields: object
    ) -> Delivery[E]:
        extra = dict(options)
        on_delivery = extra.pop("on_delivery", None)
        if extra.get("event_id") is None:
            extra["event_id"] = self._new_event_id()
        if extra.get("timestamp") is None:
            extra["timestamp"] = self._clock()
        data = {"type": _event_type(model), **fields, **extra}
        event = model.model_validate({k: v for k, v in data.items() if v is not None})
        return self.send(event, on_delivery=on_delivery)

    def _produce(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        record: R,
        on_delivery: DeliveryCallback | None,
    ) -> Delivery[R]:
        if self._closed:
            raise RuntimeError("the producer is closed")
        delivery = Delivery(topic, key, record, self._producer.poll)

        def report(error: KafkaError | None, message: Any) -> None:
            self._pending -= 1
            delivery._settle(error, message.partition(), message.offset())
            if error is not None:
                self._failures.append(delivery)
            if on_delivery is not None:
                # an error of the caller's callback must not surface from some later,
                # unrelated poll inside librdkafka (a send, a flush, close): logged and kept
                try:
                    on_delivery(delivery)
                except Exception as exc:
                    log.exception("on_delivery callback raised for %s", delivery.describe())
                    self.callback_errors.append(exc)

        deadline = time.monotonic() + self.flush_timeout_s
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=report)
                self._pending += 1
                break
            except BufferError:  # the local queue is full: let deliveries drain, then retry
                if time.monotonic() > deadline:
                    raise DeliveryError(
                        f"{topic}: the local queue stayed full for {self.flush_timeout_s:g}s",
                        undelivered=len(self),
                    ) from None
                self._producer.poll(0.1)
            except KafkaException as exc:
                error = exc.args[0]
                raise DeliveryError(
                    f"{topic} key {key[:64]!r}: refused before sending: {error.str()}"
                ) from exc
        self._producer.poll(0)
        return delivery

    def _raise_failures(self, undelivered: int, when: str) -> None:
        failures, self._failures = self._failures, []
        if not failures and not undelivered:
            return
        parts = []
        if failures:
            shown = "; ".join(d.describe() for d in failures[:5])
            more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
            parts.append(f"{len(failures)} records failed: {shown}{more}")
        if undelivered:
            parts.append(f"{undelivered} records were still unconfirmed {when}")
        raise DeliveryError("; ".join(parts), failures, undelivered)


def _event_type(model: type[E]) -> str:
    """The ``type`` literal an event model carries (``Click`` -> ``"click"``)."""
    return str(get_args(model.model_fields["type"].annotation)[0])


# -- consuming ------------------------------------------------------------------------------


class SnapshotError(ValueError):
    """A record of the snapshots topic that is not a valid snapshot.

    The consumer has moved past it: polling again continues with the next record.
    """

    def __init__(self, message: str, topic: str, partition: int, offset: int) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.offset = offset


@dataclass(frozen=True)
class SnapshotMessage:
    """One record of the snapshots topic: a snapshot, or a tombstone (the user was forgotten)."""

    user_id: str
    snapshot: Snapshot | None
    partition: int
    offset: int

    @property
    def forgotten(self) -> bool:
        """A tombstone: the user's recommendations were removed."""
        return self.snapshot is None


class SnapshotConsumer:
    """Reads recommendation snapshots as they arrive.

    Args:
        settings: resolved settings or their kafka section; or pass ``bootstrap_servers``
            (and ``topic_prefix``) instead.
        topic: the full topic name, when it is not ``<prefix>snapshots``.
        group_id: a consumer group whose offsets are committed; ``None`` reads as an
            anonymous, uncommitted group of its own (every partition, nothing remembered).
        start: ``"earliest"`` or ``"latest"`` when the group has no committed offset, or a
            mapping partition -> offset that overrides commits the first time the partition
            is assigned to this consumer (other partitions: earliest).
        on_error: called with each :class:`SnapshotError` instead of raising it.
        config: extra confluent-kafka consumer settings.

    Raises:
        ValueError: no bootstrap servers, or an unknown ``start``.

    """

    def __init__(
        self,
        settings: Settings | KafkaSettings | None = None,
        *,
        bootstrap_servers: str | None = None,
        topic_prefix: str | None = None,
        topic: str | None = None,
        group_id: str | None = None,
        start: Start = "earliest",
        on_error: Callable[[SnapshotError], None] | None = None,
        config: Mapping[str, object] | None = None,
    ) -> None:
        bootstrap, kafka, _ = _kafka_target(settings, bootstrap_servers, topic_prefix)
        if isinstance(start, str):
            if start not in ("earliest", "latest"):
                raise ValueError(f"start must be 'earliest', 'latest' or offsets, not {start!r}")
            reset, self._offsets = start, {}
        else:
            reset, self._offsets = "earliest", dict(start)
        self.topic = topic or kafka.topic("snapshots")
        self.group_id = group_id
        self._on_error = on_error
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id or f"recloop-sdk-{uuid.uuid4().hex}",
                "enable.auto.commit": group_id is not None,
                "auto.offset.reset": reset,
                **(config or {}),
            }
        )
        self._consumer.subscribe([self.topic], on_assign=self._on_assign)
        self._closed = False

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # an explicit offset applies once, when its partition first comes to this consumer:
        # after a rebalance of a named group the consumer goes on from the group's commit
        # (an anonymous group has this consumer alone: it never rebalances)
        chosen = [tp for tp in partitions if tp.partition in self._offsets]
        if chosen:
            for tp in chosen:
                tp.offset = self._offsets.pop(tp.partition)
            consumer.assign(partitions)

    def poll_message(self, timeout_s: float = 1.0) -> SnapshotMessage | None:
        """The next record (snapshot or tombstone), or ``None`` if none came in ``timeout_s``.

        Raises:
            SnapshotError: the record is not a valid snapshot (unless ``on_error`` is set,
                which then gets it, and ``None`` is returned).
            confluent_kafka.KafkaException: the consumer failed for good.

        """
        if self._closed:
            raise RuntimeError("the consumer is closed")
        message = self._consumer.poll(timeout_s)
        if message is None:
            return None
        error = message.error()
        if error is not None:
            if error.fatal() or not (
                error.retriable() or error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
            ):
                raise KafkaException(error)
            log.warning("snapshots consumer: %s (retrying)", error.str())
            return None
        partition, offset = message.partition(), message.offset()
        if partition is None or offset is None:  # only error events lack them
            raise KafkaException(KafkaError(KafkaError._BAD_MSG, "a record without a position"))
        key, value = message.key(), message.value()
        try:
            return self._decode(key, value, partition, offset)
        except SnapshotError as exc:
            if self._on_error is None:
                raise
            self._on_error(exc)
            return None

    def _decode(
        self, key: bytes | None, value: bytes | None, partition: int, offset: int
    ) -> SnapshotMessage:
        where = f"{self.topic}[{partition}]@{offset}"
        if value is None:
            if not key:
                raise SnapshotError(
                    f"{where}: a tombstone without a key", self.topic, partition, offset
                )
            return SnapshotMessage(key.decode("utf-8", "replace"), None, partition, offset)
        try:
            snapshot = parse_snapshot(value)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise SnapshotError(
                f"{where} key {key!r}: not a valid snapshot: {field}: {first['msg']}",
                self.topic,
                partition,
                offset,
            ) from exc
        if key is not None and key != snapshot.user_id.encode():
            raise SnapshotError(
                f"{where}: key {key!r} is not the snapshot's user_id {snapshot.user_id!r}",
                self.topic,
                partition,
                offset,
            )
        return SnapshotMessage(snapshot.user_id, snapshot, partition, offset)

    def poll(self, timeout_s: float = 1.0) -> Snapshot | None:
        """The next snapshot (tombstones are skipped), or ``None`` if none came in ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            message = self.poll_message(max(0.0, deadline - time.monotonic()))
            if message is not None and message.snapshot is not None:
                return message.snapshot
            if time.monotonic() >= deadline:
                return None

    def snapshots(self, idle_timeout_s: float | None = None) -> Iterator[Snapshot]:
        """Yield snapshots as they arrive; stop after ``idle_timeout_s`` without one (or never)."""
        last = time.monotonic()
        while not self._closed and (
            idle_timeout_s is None or time.monotonic() - last < idle_timeout_s
        ):
            snapshot = self.poll(0.2)
            if snapshot is not None:
                last = time.monotonic()
                yield snapshot

    def __iter__(self) -> Iterator[Snapshot]:
        """Snapshots as they arrive, until the consumer is closed."""
        return self.snapshots()

    def close(self) -> None:
        """Leave the group (committing offsets if it has one) and close the connection."""
        if not self._closed:
            self._closed = True
            self._consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LatestSnapshots:
    """The latest snapshot per user, fed by a :class:`SnapshotConsumer` on demand.

    Nothing runs in the background: :meth:`update` (or :meth:`wait_for`) polls the
    consumer in the caller's thread. A confluent-kafka consumer belongs to one thread, and
    this way a bad record raises where the caller can see it instead of dying in a thread.
    A service that wants lookups kept fresh calls ``update()`` from its own loop.

    Args:
        consumer: the source (usually ``start="earliest"``: the compacted topic holds the
            latest snapshot of every user).

    """

    def __init__(self, consumer: SnapshotConsumer) -> None:
        self.consumer = consumer
        self._latest: dict[str, Snapshot] = {}

    def update(self, timeout_s: float = 0.0) -> int:
        """Apply the records that have arrived (waiting up to ``timeout_s`` for the first).

        Returns how many records were applied; a tombstone removes its user.
        """
        applied = 0
        message = self.consumer.poll_message(timeout_s)
        while message is not None:
            if message.snapshot is None:
                self._latest.pop(message.user_id, None)
            else:
                self._latest[message.user_id] = message.snapshot
            applied += 1
            message = self.consumer.poll_message(0.0)
        return applied

    def get(self, user_id: str) -> Snapshot | None:
        """The latest snapshot of ``user_id`` seen so far, or ``None``."""
        return self._latest.get(user_id)

    def wait_for(
        self,
        user_id: str,
        predicate: Callable[[Snapshot], bool] | None = None,
        timeout_s: float = 30.0,
    ) -> Snapshot:
        """Poll until ``user_id`` has a snapshot (for which ``predicate`` holds, if given).

        Raises:
            TimeoutError: none came within ``timeout_s``; the message names the latest seen.

        """
        deadline = time.monotonic() + timeout_s
        while True:
            current = self._latest.get(user_id)
            if current is not None and (predicate is None or predicate(current)):
                return current
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = (
                    f"the latest is version {current.version} from event {current.source_event_id}"
                    if current is not None
                    else "none was seen"
                )
                raise TimeoutError(
                    f"no matching snapshot of user {user_id!r} within {timeout_s:g}s; {seen}"
                )
            self.update(min(remaining, 0.2))

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._latest

    def __len__(self) -> int:
        return len(self._latest)

    def as_dict(self) -> dict[str, Snapshot]:
        """A copy of the map user id -> latest snapshot."""
        return dict(self._latest)
