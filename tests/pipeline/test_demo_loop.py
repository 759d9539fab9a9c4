"""The demo's loop (``pipeline.demo._Loop``) with stand-in clients: no broker, no worker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from operators.simulator import SessionClock, Simulation
from pipeline import demo
from pipeline.demo import DemoOptions, _document, _Loop
from schemas.snapshot import Snapshot, snapshot_to_json

CLOCK_START = datetime(2026, 1, 1, tzinfo=UTC)


class Producer:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        self.values.append(value)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0


class Message:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value

    def error(self) -> None:
        return None


class Consumer:
    """Hands out queued records; notes every call that would wait for a full batch."""

    def __init__(self) -> None:
        self.queued: list[Message] = []
        self.batch_waits: list[float] = []

    def poll(self, timeout: float) -> Message | None:
        return self.queued.pop(0) if self.queued else None

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        if timeout > 0 and len(self.queued) < num_messages:
            self.batch_waits.append(timeout)  # librdkafka would wait this long
        taken, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return taken


def _loop(users: int = 2) -> tuple[_Loop, Producer, Consumer]:
    clock = SessionClock(CLOCK_START)
    options = DemoOptions(users=users, rounds=25, progress=False)
    sim = Simulation.generate(seed=7, n_users=users, n_items=40, clock=clock,
                              n_categories=8, drift_round=options.drift_round)  # fmt: skip
    producer, consumer = Producer(), Consumer()
    return _Loop(sim, options, producer, consumer, "events", clock), producer, consumer


def test_a_snapshot_is_timed_when_it_arrives_not_when_a_batch_fills() -> None:
    loop, _, consumer = _loop(users=1)
    event = loop.sim.hello("user-0000")
    loop._send(event)
    snapshot = Snapshot(user_id="user-0000", version=1, generated_at=CLOCK_START,
                        source_event_id=event.event_id, model_version="m", items=[])  # fmt: skip
    consumer.queued.append(Message(snapshot_to_json(snapshot)))

    assert [s.source_event_id for s in loop._receive(0.05)] == [event.event_id]
    assert consumer.batch_waits == []  # never waited for 500 records to time one
    assert len(loop.latencies) == 1


def test_a_run_the_time_budget_stopped_is_not_complete(monkeypatch: Any) -> None:
    monkeypatch.setattr(demo, "DRAIN_S", 0.0)
    loop, _, _ = _loop()
    loop.deadline = 0.0  # spent before the first round

    complete = loop.run()

    document = _document(loop, loop.options, "r", "p.", "127.0.0.1:9", {}, complete)
    assert complete is False and loop.out_of_time
    assert document["run"]["complete"] is False
    assert document["run"]["stopped_by_time_budget"] is True


def test_the_drift_round_is_not_lost_to_floating_point() -> None:
    assert DemoOptions(rounds=50, drift_at=0.58).drift_round == 30  # 28.999999999999996 + 1
    assert DemoOptions(rounds=100, drift_at=0.57).drift_round == 58
    assert DemoOptions(rounds=25, drift_at=0.6).drift_round == 16


def test_delivery_failures_fail_the_run_even_when_the_time_budget_stopped_it(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(demo, "DRAIN_S", 0.0)
    loop, _, _ = _loop()
    loop.deadline = 0.0
    loop.run()
    loop.delivery_failures = 3
    assert demo._exit_code(loop, complete=False) == 1
    loop.delivery_failures = 0
    assert demo._exit_code(loop, complete=False) == 0  # the budget alone: the report says so
