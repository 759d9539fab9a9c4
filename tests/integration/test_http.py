"""The HTTP API of real worker processes, through the real broker.

One worker: status codes, auth, limits, 404s, /healthz, and /metrics and the metrics
topic after a scripted scenario. Two workers on two partitions: a request to either
worker returns the user's snapshot, served by the worker that owns the user.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2

from operators.synthetic import SyntheticWorld
from pipeline.settings import Settings
from pipeline.worker_process import WorkerProcess
from schemas.snapshot import Snapshot, parse_snapshot
from tests.integration.harness import Harness, Samples, free_port, parse_metrics

pytestmark = pytest.mark.integration
TOKEN = "integration-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    port: int,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> Answer:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, dict(exc.headers), exc.read())


def post(port: int, payload: object, headers: dict[str, str] | None = None) -> Answer:
    sent = {"Content-Type": "application/json", **AUTH, **(headers or {})}
    return call(port, "/events", json.dumps(payload).encode(), sent)


def wait_for(check: Callable[[], Answer | None], what: str, timeout_s: float = 60.0) -> Answer:
    deadline = time.monotonic() + timeout_s
    last: Answer | None = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError:  # the server is not listening yet
            last = None
        if last is not None and last.status < 300:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last answer: {last}")


def event(n: int, user: str, kind: str, item: str | None = None, **extra: object) -> dict:
    body: dict[str, object] = {
        "event_id": f"{user}-{n}",
        "user_id": user,
        "type": kind,
        "timestamp": (T0 + timedelta(seconds=n)).isoformat(),
        **extra,
    }
    if item is not None:
        body["item_id"] = item
    return body


def snapshot_of(port: int, user: str, event_id: str, timeout_s: float = 60.0) -> Snapshot:
    """Poll GET /users/{user}/recommendations until it reflects ``event_id``."""

    seen: list[Answer] = []

    def check() -> Answer | None:
        answer = call(port, f"/users/{user}/recommendations")
        seen[:] = [answer]
        if answer.status == 200 and parse_snapshot(answer.body).source_event_id == event_id:
            return answer
        return None

    try:
        return parse_snapshot(wait_for(check, f"{user}'s {event_id} on {port}", timeout_s).body)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answer: {seen}") from None


def metrics(port: int) -> Samples:
    answer = call(port, "/metrics")
    assert answer.status == 200
    return parse_metrics(answer.body.decode())


def web_settings(settings: Settings, port: int, state: Path) -> Settings:
    worker = settings.worker.model_copy(
        update={"web_enabled": True, "web_port": port, "state_dir": state}
    )
    http = settings.http.model_copy(
        update={"token": TOKEN, "max_batch": 50, "max_body_bytes": 64 * 1024}
    )
    metrics_section = settings.metrics.model_copy(update={"interval_s": 1.0})
    return settings.model_copy(update={"worker": worker, "http": http, "metrics": metrics_section})


@pytest.fixture
def world() -> SyntheticWorld:
    return SyntheticWorld.generate(seed=5, n_items=40, n_users=2, n_categories=4)


@pytest.fixture
def harness(kafka_settings: Settings, tmp_path: Path, world: SyntheticWorld) -> Harness:
    h = Harness(kafka_settings, tmp_path)
    h.send_items(world.items)
    return h


def start(harness: Harness, name: str, port: int) -> WorkerProcess:
    settings = web_settings(harness.settings, port, harness.workdir / f"state-{name}")
    process = harness.worker(name, settings)
    process.start()
    return process


@pytest.fixture
def one_worker(harness: Harness, world: SyntheticWorld) -> Iterator[int]:
    port = free_port()
    process = start(harness, "web", port)
    try:
        assert harness.wait_for_count("item-state", len(world.items)), process.log_tail()
        harness.wait_until_worker_sees_catalog()
        wait_for(lambda: call(port, "/healthz"), "a healthy worker")
        yield port
    finally:
        assert process.stop() == 0, process.log_tail()


def check_errors(port: int, world: SyntheticWorld) -> None:
    """Auth, limits and validation: clear errors, and nothing bad is produced."""
    assert (
        post(port, event(0, "carol", "click", "x"), {"Authorization": "Bearer nope"}).status == 401
    )
    assert call(port, "/events", b"{}", {"Content-Type": "application/json"}).status == 401
    too_many = post(port, [event(n, "carol", "click", "x") for n in range(51)])
    assert (too_many.status, too_many.json()["error"]) == (413, "batch_too_large")
    huge = post(port, {**event(0, "carol", "click", "x"), "padding": "x" * 70_000})
    assert (huge.status, huge.json()["error"]) == (413, "body_too_large")
    invalid = post(port, [event(0, "carol", "click", "x"), event(1, "carol", "dwell", "x")])
    assert invalid.status == 422
    assert (invalid.json()["error"], invalid.json()["index"]) == ("missing_field", 1)
    unknown = call(port, "/users/nobody/recommendations")
    assert (unknown.status, unknown.json()["error"]) == (404, "unknown_user")
    assert call(port, f"/items/{world.items[0].item_id}/similar?k=3").json()["items"]
    assert call(port, "/items/none/similar").status == 404


def test_one_worker_serves_validates_and_measures(
    one_worker: int, harness: Harness, world: SyntheticWorld
) -> None:
    port = one_worker
    health = call(port, "/healthz").json()
    assert health["status"] == "ok"
    assert set(health["checks"]["agents"]["agents"].values()) == {"running"}
    assert health["checks"]["ready"]["catalog_items"] == len(world.items)

    check_errors(port, world)

    before = metrics(port)
    # the scripted scenario: a like, then four of the recommended items shown, one clicked
    first = post(port, event(1, "carol", "click", world.items[0].item_id))
    assert first.status == 202 and first.json()["event_ids"] == ["carol-1"]
    shown = snapshot_of(port, "carol", "carol-1")
    top = [item.item_id for item in shown.items[:4]]
    assert post(port, event(2, "carol", "impression", item_ids=top)).status == 202
    # the click goes to a shown item that is still in the list the impression produced
    listed = [i.item_id for i in snapshot_of(port, "carol", "carol-2").items]
    clicked = next(item for item in top if item in listed)
    assert post(port, event(3, "carol", "click", clicked)).status == 202
    harness.send_raw(b"carol", b"{not json")
    harness.flush()
    latest = snapshot_of(port, "carol", "carol-3")
    assert latest.version == 3
    cut = call(port, "/users/carol/recommendations?k=2")
    assert [i.item_id for i in parse_snapshot(cut.body).items] == [
        i.item_id for i in latest.items[:2]
    ]

    def dead_letter_counted() -> Answer | None:
        key = ("recloop_dead_letters_total", (("reason", "invalid_json"),))
        return Answer(200, {}, b"") if metrics(port).get(key) == 1 else None

    wait_for(dead_letter_counted, "the dead letter in /metrics", 30)
    after = metrics(port)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("recloop_events_total", outcome="processed") == 3
    assert delta("recloop_events_total", outcome="dead_lettered") == 1
    assert delta("recloop_recommended_impressions_total", cohort="cold") == 4
    assert delta("recloop_recommended_clicks_total", cohort="cold") == 1
    assert after[("recloop_ctr", (("cohort", "all"),))] == 0.25
    assert delta("recloop_event_to_snapshot_seconds_count") == 3
    assert after[("recloop_event_to_snapshot_recent_seconds", (("quantile", "0.99"),))] < 30
    assert after[("recloop_catalog_items", ())] == len(world.items)
    assert delta("recloop_http_requests_total", route="post_events", status="202") == 3
    # carol's two clicks were new likes: the online model learned from those that came
    # from the head of her list it re-ranks (the first, on a catalog without feedback)
    assert 1 <= delta("recloop_model_updates_total") <= 2
    assert after[("recloop_model_log_loss", ())] > 0.0

    # the metrics topic: every second, keyed by worker, the same figures
    def published(records: list[Any]) -> bool:
        return any(
            json.loads(r.value)["figures"]["recommended_clicks"]["cold"] == 1 for r in records
        )

    records = harness.read("metrics", published, timeout_s=30)
    record = json.loads(records[-1].value)
    assert published(records), records
    assert record["schema_version"] == 1 and records[-1].key.decode() == record["worker"]
    assert record["figures"]["ctr"]["all"] == 0.25
    assert record["figures"]["worker"]["dead_letter_reasons"] == {"invalid_json": 1}
    assert record["figures"]["model"]["updates"] >= 1


def settle(port: int, partitions: int, timeout_s: float = 90.0) -> None:
    """Send a probe event to every partition until each one's snapshot comes back.

    Right after a rebalance faust-streaming can drop records fetched in the same batch
    as the generation changed (they are then never delivered); like the harness's
    warm-up, probes are re-sent until the group has settled.
    """
    probes: dict[int, str] = {}
    n = 0
    while len(probes) < partitions:
        user = f"probe{n}"
        probes.setdefault((murmur2(user.encode()) & 0x7FFFFFFF) % partitions, user)
        n += 1
    deadline = time.monotonic() + timeout_s
    attempt = 0
    pending = set(probes.values())
    while pending and time.monotonic() < deadline:
        attempt += 1
        probe = [event(attempt, u, "impression", item_ids=["none"]) for u in sorted(pending)]
        assert post(port, probe).status == 202
        with contextlib.suppress(AssertionError):
            for user in sorted(pending):
                snapshot_of(port, user, f"{user}-{attempt}", timeout_s=10)
                pending.discard(user)
    assert not pending, f"no snapshot for the probes of {pending}"


def test_either_of_two_workers_returns_the_snapshot_of_any_user(
    harness: Harness, world: SyntheticWorld
) -> None:
    ports = [free_port(), free_port()]
    # one after the other, as a deployment scales out: the second joins a running group
    processes = [start(harness, "w0", ports[0])]
    try:
        assert harness.wait_for_count("item-state", len(world.items)), processes[0].log_tail()
        wait_for(lambda: call(ports[0], "/healthz"), "the first worker healthy", 90)
        processes.append(start(harness, "w1", ports[1]))
        for port in ports:  # healthy: each fetches the events partitions it was assigned
            wait_for(lambda port=port: call(port, "/healthz"), f"worker {port} healthy", 90)  # type: ignore[misc]

        def two_owners() -> Answer | None:
            answer = call(ports[0], "/router/snapshots/")
            owners = answer.json() if answer.status == 200 else {}
            held = [url for url, topics in owners.items() if any(topics.values())]
            return answer if len(held) == 2 else None

        wait_for(two_owners, "both workers in the snapshots table's assignment", 90)
        settle(ports[0], partitions=harness.settings.kafka.partitions)
        users = [f"user{n}" for n in range(8)]
        accepted = post(
            ports[0], [event(1, u, "click", world.items[n].item_id) for n, u in enumerate(users)]
        )
        assert accepted.status == 202, accepted.body
        served_by: dict[str, set[str]] = {}
        for user in users:
            for port in ports:
                try:
                    snap = snapshot_of(port, user, f"{user}-1")
                except AssertionError as exc:
                    routes = [call(p, "/router/snapshots/").body for p in ports]
                    routes += [call(p, "/healthz").body for p in ports]
                    routes += [
                        line
                        for p in ports
                        for line in call(p, "/metrics").body.decode().splitlines()
                        if line.startswith(("recloop_events_total", "recloop_consumer"))
                    ]
                    topic = harness.snapshots(lambda s, user=user: user in s, timeout_s=5)  # type: ignore[misc]
                    logs = "\n=====\n".join(p.log_tail(60) for p in processes)
                    raise AssertionError(
                        f"{exc}\nroutes {routes}\non topic: {user in topic}\n{logs}"
                    ) from None
                assert snap.user_id == user and snap.version == 1
                answer = call(port, f"/users/{user}/recommendations")
                served_by.setdefault(user, set()).add(answer.headers["X-Recloop-Served-By"])
        # one owner per user, whichever worker was asked; and both workers own some users
        assert all(len(owners) == 1 for owners in served_by.values()), served_by
        owners = {owner for found in served_by.values() for owner in found}
        assert owners == {f"http://127.0.0.1:{port}" for port in ports}, served_by
    finally:
        for process in processes:  # both leave the group at once, as in a scale-down
            process.request_stop()
        for process in processes:
            assert process.stop() == 0, process.log_tail()
