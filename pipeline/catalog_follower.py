"""Every worker's copy of every item: a reader of the whole compacted item-state topic.

Retrieval needs all items on every worker, while consumer groups split partitions; so
this reader uses no group: it assigns itself every partition from the beginning. A
background thread only polls and queues; the records are applied to the :class:`Catalog`
on the event-loop thread by :meth:`CatalogFollower.drain`, so ranking never sees a
half-applied update (and, later, the index is never written while it is queried).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from operators.catalog import Catalog, ItemState
from pipeline.clients import end_offset, poll_ready

log = logging.getLogger(__name__)
#: Records applied between two turns of the event loop while catching up (about 40 ms).
CATCH_UP_SLICE = 500


class CatalogFollower:
    """Follows the item-state topic into a :class:`Catalog`.

    Args:
        bootstrap_servers: the broker.
        topic: the item-state topic's full name.
        partitions: how many partitions it has (from the settings).
        catalog: the catalog to fill (with the worker's embedding space and saved index);
            an empty default one when omitted.

    """

    def __init__(
        self, bootstrap_servers: str, topic: str, partitions: int, catalog: Catalog | None = None
    ) -> None:
        self.topic = topic
        self.partitions = partitions
        self.catalog = catalog if catalog is not None else Catalog()
        self._bootstrap = bootstrap_servers
        self._queue: queue.SimpleQueue[tuple[bytes | None, bytes | None, int, int]] = (
            queue.SimpleQueue()
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._targets: dict[int, int] = {}
        self._applied: dict[int, int] = {}
        self.errors: list[str] = []

    def start(self, timeout_s: float = 30.0) -> None:
        """Assign every partition and start polling in a background thread."""
        consumer = Consumer(
            {
                "bootstrap.servers": self._bootstrap,
                "group.id": "recloop-catalog-follower",  # required, never used for commits
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                # item changes should reach every worker within milliseconds, not 500 ms
                "fetch.wait.max.ms": 10,
            }
        )
        deadline = time.monotonic() + timeout_s  # one budget for every step of the start
        partitions = self._wait_for_partitions(consumer, deadline, timeout_s)
        for partition in partitions:
            high = end_offset(consumer, self.topic, partition, deadline)
            if high is None:
                consumer.close()
                raise RuntimeError(
                    f"no leader answered for {self.topic}[{partition}] within {timeout_s:.0f}s"
                )
            self._targets[partition] = high
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        self._thread = threading.Thread(
            target=self._poll, args=(consumer,), name="catalog-follower", daemon=True
        )
        self._thread.start()

    def _wait_for_partitions(
        self, consumer: Consumer, deadline: float, timeout_s: float
    ) -> list[int]:
        """The topic's partitions, once the broker's metadata shows all of them.

        A topic created a moment ago may not be in the metadata yet; following it then
        would silently follow nothing, so wait, and fail loudly if it never appears.
        """
        seen: list[int] = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                topic = consumer.list_topics(self.topic, timeout=left).topics.get(self.topic)
            except KafkaException:  # no metadata in time (a broker just started): retry
                topic = None
            if topic is not None and topic.error is None:
                seen = sorted(topic.partitions)
                if len(seen) >= self.partitions:
                    return seen
            time.sleep(0.1)
        consumer.close()
        raise RuntimeError(
            f"topic {self.topic} shows {len(seen)} of {self.partitions} partitions after "
            f"{timeout_s:.0f}s; create recloop's topics first (recloop topics create)"
        )

    def _poll(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                for message in poll_ready(consumer, 0.2):
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            self.errors.append(str(error))
                            log.warning("catalog follower: %s", error)
                        continue
                    self._queue.put(
                        (
                            message.key(),
                            message.value(),
                            message.partition() or 0,
                            message.offset() or 0,
                        )
                    )
        finally:
            consumer.close()

    def drain(self, limit: int | None = None) -> int:
        """Apply the queued records (at most ``limit``) to the catalog; returns how many."""
        applied = 0
        while limit is None or applied < limit:
            try:
                key, value, partition, offset = self._queue.get_nowait()
            except queue.Empty:
                return applied
            if key is None:
                pass  # not ours to interpret: item state is always keyed by item id
            elif value is None:
                self.catalog.remove(key.decode())
            else:
                self.catalog.put(ItemState.restore(value))
            self._applied[partition] = offset + 1
            applied += 1
        return applied

    def caught_up(self) -> bool:
        """Whether everything present at start has been applied."""
        return all(self._applied.get(p, 0) >= high for p, high in self._targets.items())

    async def wait_caught_up(self, timeout_s: float = 60.0) -> bool:
        """Drain until the catalog holds what the topic held at start (or time runs out)."""
        import asyncio

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # a slice at a time, so the loop goes on serving while a large catalog loads
            applied = self.drain(CATCH_UP_SLICE)
            if self.caught_up():
                return True
            await asyncio.sleep(0.05 if applied < CATCH_UP_SLICE else 0)
        return False

    def stop(self) -> None:
        """Stop the polling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
