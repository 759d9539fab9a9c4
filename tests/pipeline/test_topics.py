"""Waiting for the broker to list recloop's topics (a fake admin client and clock)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pipeline.settings import KafkaSettings
from pipeline.topics import TopicsNotReady, missing_topics, topic_specs, wait_for_topics

KAFKA = KafkaSettings(bootstrap_servers="nowhere:9092", topic_prefix="w.", partitions=2)


@dataclass
class _Partition:
    leader: int = 1


@dataclass
class _Topic:
    partitions: dict[int, _Partition]
    error: Any = None


def _all_topics(partitions: int = 2, leader: int = 1) -> dict[str, _Topic]:
    return {
        spec.name: _Topic({p: _Partition(leader) for p in range(partitions)})
        for spec in topic_specs(KAFKA)
    }


@dataclass
class _Admin:
    """Answers ``list_topics`` from a script of metadata views, the last one repeated."""

    views: list[dict[str, _Topic]]
    asked: int = 0

    def list_topics(self, timeout: float) -> Any:
        view = self.views[min(self.asked, len(self.views) - 1)]
        self.asked += 1
        return type("Metadata", (), {"topics": view})


@dataclass
class _Clock:
    now: float = 0.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_every_topic_listed_with_leaders_is_ready() -> None:
    assert missing_topics(_all_topics(), KAFKA) == []


def test_a_topic_unlisted_leaderless_short_or_in_error_is_missing() -> None:
    listed = _all_topics()
    names = ("events", "items", "item-feedback", "item-state")
    events, items, feedback, state = (KAFKA.topic(n) for n in names)
    del listed[events]
    listed[items] = _Topic({0: _Partition(), 1: _Partition(leader=-1)})
    listed[feedback] = _Topic({0: _Partition()})
    listed[state] = _Topic({0: _Partition(), 1: _Partition()}, error="UNKNOWN_TOPIC_OR_PART")
    assert missing_topics(listed, KAFKA) == [events, items, feedback, state]


def test_the_wait_ends_when_the_broker_lists_the_topics() -> None:
    clock, heard = _Clock(), []
    admin = _Admin([{}, {}, _all_topics()])
    wait_for_topics(KAFKA, "nowhere:9092", admin=admin, clock=clock, sleep=clock.sleep,
                    on_wait=heard.append)  # fmt: skip
    assert admin.asked == 3
    assert len(clock.slept) == 2
    assert heard == [[spec.name for spec in topic_specs(KAFKA)]]  # told once, every name


def test_a_ready_broker_costs_one_question_and_no_wait() -> None:
    clock, heard = _Clock(), []
    admin = _Admin([_all_topics()])
    wait_for_topics(KAFKA, "nowhere:9092", admin=admin, clock=clock, sleep=clock.sleep,
                    on_wait=heard.append)  # fmt: skip
    assert (admin.asked, clock.slept, heard) == (1, [], [])


def test_topics_still_missing_at_the_deadline_are_named_in_the_error() -> None:
    clock = _Clock()
    view = _all_topics()
    del view[KAFKA.topic("snapshots")]
    with pytest.raises(TopicsNotReady, match=r"after 3 s .* w\.snapshots$"):
        wait_for_topics(KAFKA, "nowhere:9092", timeout_s=3, admin=_Admin([view]), clock=clock,
                        sleep=clock.sleep)  # fmt: skip
    assert 3 <= clock.now < 3.5
