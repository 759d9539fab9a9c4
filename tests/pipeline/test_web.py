"""The HTTP API (pipeline/web.py) on the real Faust app and aiohttp server, without a broker.

Events go through the events agent's test context; the API's publisher records what it
would produce, and the owner of every user is this worker unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from unittest.mock import ANY

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from operators.catalog import Catalog, ItemState
from operators.synthetic import SyntheticWorld
from pipeline.app import Recloop
from pipeline.metrics import LiveCollector
from pipeline.web import (
    FORWARDED_HEADER,
    OPERATIONS,
    SERVED_BY_HEADER,
    HttpApi,
    openapi_document,
)
from schemas.events import parse_event
from schemas.snapshot import parse_snapshot
from tests.pipeline.conftest import NOW
from tests.pipeline.doubles import RecordingEmitter, close_pipeline_app, pipeline_app

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class RecordingPublisher:
    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    fail: bool = False
    hang: bool = False

    async def publish(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        if self.fail:
            raise RuntimeError("broker gone")
        if self.hang:  # a broker that never answers
            await asyncio.Event().wait()
        self.records.extend(records)


@dataclass
class Worker:
    recloop: Recloop
    client: TestClient  # type: ignore[type-arg]
    publisher: RecordingPublisher
    emitter: RecordingEmitter
    owners: dict[str, URL]
    fatal: list[BaseException]


def _event(event_id: str, user: str, kind: str, item: str | None = None, **extra: object) -> dict:
    body: dict[str, object] = {
        "event_id": event_id,
        "user_id": user,
        "type": kind,
        "timestamp": "2026-11-01T10:00:00Z",
        **extra,
    }
    if item is not None:
        body["item_id"] = item
    return body


async def _start(world: SyntheticWorld, env: dict[str, str], port: int = 6066) -> Worker:
    catalog = Catalog()
    for item in world.items:
        catalog.put(ItemState(item_id=item.item_id, record=item))
    withdrawn = world.items[-1].model_copy(update={"available": False})
    catalog.put(ItemState(item_id=withdrawn.item_id, record=withdrawn))
    env = {
        "RECLOOP__WORKER__WEB_PORT": str(port),
        "RECLOOP__HTTP__HEALTH_TIMEOUT_S": "0.2",
        "RECLOOP__HTTP__MAX_BATCH": "3",
        "RECLOOP__HTTP__MAX_BODY_BYTES": "4096",
        **env,
    }
    emitter = RecordingEmitter()
    recloop, fatal = pipeline_app(catalog, env, emitter, NOW)
    publisher = RecordingPublisher()
    owners: dict[str, URL] = {}
    api = HttpApi(recloop, publisher=publisher, owner=owners.get)
    api.register(recloop.app)
    web = recloop.app.web
    web.init_server()
    client = TestClient(TestServer(web.web_app))
    await client.start_server()
    return Worker(recloop, client, publisher, emitter, owners, fatal)


async def _stop(worker: Worker) -> None:
    await worker.client.close()
    session = worker.recloop.app._http_client
    if session is not None:
        await session.close()
    close_pipeline_app(worker.recloop, worker.fatal)


@pytest_asyncio.fixture
async def worker(world: SyntheticWorld) -> AsyncIterator[Worker]:
    # one event at a time: the figures below count one list per event
    w = await _start(world, {"RECLOOP__HTTP__TOKEN": TOKEN, "RECLOOP__WORKER__BATCH_MAX": "1"})
    yield w
    await _stop(w)


async def _feed(worker: Worker, *events: dict, latency: float = 0.02) -> None:
    async with worker.recloop.events_agent.test_context() as agent:
        for body in events:
            await agent.put(
                json.dumps(body).encode(),
                key=str(body.get("user_id", "u1")).encode(),
                timestamp=NOW.timestamp() - latency,
            )


# -- GET /users/{id}/recommendations ------------------------------------------------------


async def test_recommendations_return_the_latest_snapshot_cut_to_k(
    worker: Worker, world: SyntheticWorld
) -> None:
    items = world.items
    await _feed(worker, _event("e1", "u1", "click", items[0].item_id),
                _event("e2", "u1", "click", items[4].item_id))  # fmt: skip
    latest = worker.emitter.to("snapshots")[-1].value

    full = await worker.client.get("/users/u1/recommendations")
    assert full.status == 200
    assert await full.read() == latest  # the bytes the snapshots topic got
    assert full.headers["X-Recloop-Reranked"] == "false"
    assert full.headers[SERVED_BY_HEADER] == "http://127.0.0.1:6066"

    cut = await worker.client.get("/users/u1/recommendations", params={"k": "3"})
    snapshot = parse_snapshot(await cut.read())
    assert snapshot.source_event_id == "e2" and snapshot.version == 2
    assert [i.item_id for i in snapshot.items] == [
        i.item_id for i in parse_snapshot(latest or b"").items[:3]
    ]


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/users/nobody/recommendations", 404, "unknown_user"),
        ("/users/u1/recommendations?k=0", 400, "invalid_parameter"),
        ("/users/u1/recommendations?k=101", 400, "invalid_parameter"),
        ("/users/u1/recommendations?k=ten", 400, "invalid_parameter"),
        ("/users/u1/recommendations?k=%C2%B2", 400, "invalid_parameter"),  # a superscript 2
        (f"/users/u1/recommendations?k={'9' * 5000}", 400, "invalid_parameter"),
        ("/users/u1/recommendations?surface=%07bell", 400, "invalid_parameter"),
        (f"/users/{'x' * 129}/recommendations", 400, "invalid_parameter"),
        ("/items/nothing/similar", 404, "unknown_item"),
        ("/items/item-00001/similar?k=-1", 400, "invalid_parameter"),
    ],
)
async def test_bad_reads_get_a_machine_readable_error(
    worker: Worker, world: SyntheticWorld, path: str, status: int, error: str
) -> None:
    await _feed(worker, _event("e1", "u1", "click", world.items[0].item_id))
    response = await worker.client.get(path)
    assert response.status == status
    body = await response.json()
    assert body["error"] == error and body["detail"]


async def test_an_id_known_only_from_feedback_is_no_catalog_item(
    worker: Worker, world: SyntheticWorld
) -> None:
    # feedback names ids the catalog never had: "withdrawn" told the caller it once was
    await _feed(worker, _event("e1", "u1", "click", world.items[0].item_id))
    worker.recloop.follower.catalog.put(ItemState(item_id="ghost", positives=3))
    response = await worker.client.get("/items/ghost/similar")
    assert response.status == 404
    assert (await response.json())["error"] == "unknown_item"


async def test_a_surface_with_its_own_penalty_gets_a_list_ranked_for_it(
    worker: Worker, world: SyntheticWorld
) -> None:
    taste = [i for i in world.items if i.category == world.items[0].category]
    liked = [_event(f"c{n}", "u1", "click", item.item_id) for n, item in enumerate(taste[:3])]
    context = {"surface": "home", "session_id": "s1"}
    disliked = _event("n1", "u1", "not_relevant", taste[3].item_id, context=context)
    await _feed(worker, *liked, disliked)

    async def category_count(surface: str) -> tuple[int, str]:
        response = await worker.client.get("/users/u1/recommendations", params={"surface": surface})
        assert response.status == 200
        items = parse_snapshot(await response.read()).items
        return sum(i.category == taste[0].category for i in items), response.headers[
            "X-Recloop-Reranked"
        ]

    home, home_reranked = await category_count("home")
    elsewhere, elsewhere_reranked = await category_count("search")
    # home: the stored list (ranked for home); search: ranked anew, the penalty at half
    assert (home_reranked, elsewhere_reranked) == ("false", "true")
    assert home < elsewhere


# -- GET /items/{id}/similar ---------------------------------------------------------------


async def test_similar_items_come_from_the_index_most_similar_first(
    worker: Worker, world: SyntheticWorld
) -> None:
    await _feed(worker, _event("e1", "u1", "click", world.items[0].item_id))  # ready
    item = world.items[0]
    response = await worker.client.get(f"/items/{item.item_id}/similar", params={"k": "5"})
    assert response.status == 200
    body = await response.json()
    scores = [i["score"] for i in body["items"]]
    assert body["item_id"] == item.item_id and len(body["items"]) == 5
    assert scores == sorted(scores, reverse=True)
    assert item.item_id not in {i["item_id"] for i in body["items"]}
    # same category, same content prior: the nearest item shares the category
    assert body["items"][0]["category"] == item.category

    gone = await worker.client.get(f"/items/{world.items[-1].item_id}/similar")
    assert gone.status == 404 and (await gone.json())["error"] == "item_unavailable"


async def test_reads_answer_503_until_the_events_agent_has_its_catalog(worker: Worker) -> None:
    response = await worker.client.get("/items/item-00001/similar")
    assert response.status == 503 and (await response.json())["error"] == "not_ready"


# -- POST /events --------------------------------------------------------------------------


async def test_valid_events_are_produced_keyed_by_user_once_acknowledged(worker: Worker) -> None:
    one = _event("p1", "u7", "click", "item-00001")
    response = await worker.client.post("/events", json=one, headers=AUTH)
    assert response.status == 202
    assert await response.json() == {"accepted": 1, "event_ids": ["p1"]}
    batch = [_event("p2", "u8", "skip", "item-00002"), _event("p3", "u9", "click", "item-00003")]
    response = await worker.client.post("/events", json=batch, headers=AUTH)
    assert response.status == 202 and (await response.json())["accepted"] == 2

    keys = [key for key, _ in worker.publisher.records]
    assert keys == [b"u7", b"u8", b"u9"]
    assert [parse_event(value).event_id for _, value in worker.publisher.records] == [
        "p1",
        "p2",
        "p3",
    ]


async def test_an_invalid_event_rejects_the_whole_batch_with_its_index_and_reason(
    worker: Worker,
) -> None:
    batch = [
        _event("ok", "u1", "click", "item-00001"),
        _event("bad", "u1", "teleport", "item-00001"),
        _event("late", "u1", "click", "item-00001", timestamp="2031-01-01T00:00:00Z"),
    ]
    response = await worker.client.post("/events", json=batch, headers=AUTH)
    assert response.status == 422
    body = await response.json()
    assert (body["error"], body["index"], body["accepted"]) == ("unknown_type", 1, 0)
    assert [(e["index"], e["error"]) for e in body["errors"]] == [
        (1, "unknown_type"),
        (2, "timestamp_in_future"),
    ]
    assert worker.publisher.records == []


@pytest.mark.parametrize(
    ("body", "headers", "status", "error"),
    [
        (b"{not json", {}, 400, "invalid_json"),
        (b'{"x": NaN}', {}, 400, "invalid_json"),
        (b"[" * 2000 + b"]" * 2000, {}, 400, "invalid_json"),
        (b"\xff\xfe", {}, 400, "invalid_json"),
        (b"[]", {}, 400, "empty_batch"),
        (b"42", {}, 400, "invalid_body"),
        (json.dumps([_event(f"e{n}", "u", "click", "i") for n in range(4)]).encode(), {}, 413,
         "batch_too_large"),
        (b"[" + b" " * 5000 + b"]", {}, 413, "body_too_large"),
        (b"{}", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (b"{}", {"Authorization": "Bearer wrong-token-wrong-token"}, 401, "unauthorized"),
        (b"{}", {"Authorization": ""}, 401, "unauthorized"),
        (b"{}", {"Authorization": f"Basic {TOKEN}"}, 401, "unauthorized"),
    ],
)  # fmt: skip
async def test_bad_posts_get_a_clear_4xx_and_nothing_is_produced(
    worker: Worker, body: bytes, headers: dict[str, str], status: int, error: str
) -> None:
    sent = {"Content-Type": "application/json", **AUTH, **headers}
    response = await worker.client.post("/events", data=body, headers=sent)
    assert response.status == status
    assert (await response.json())["error"] == error
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert worker.publisher.records == []


async def test_a_token_that_is_not_utf8_is_unauthorized_not_a_server_error(
    worker: Worker,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.client.server.port)
    writer.write(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer \xff\xfe\r\nContent-Length: 2\r\n"
                 b"Connection: close\r\n\r\n{}")  # fmt: skip
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "unauthorized"
    assert worker.publisher.records == []


async def test_a_lone_surrogate_is_an_invalid_event_not_a_server_error(worker: Worker) -> None:
    body = json.dumps(_event("p1", "u\ud800", "click", "item-00001")).encode()
    response = await worker.client.post(
        "/events", data=body, headers={"Content-Type": "application/json", **AUTH}
    )
    assert response.status == 422
    assert (await response.json())["errors"] == [
        {"index": 0, "error": "invalid_utf8", "detail": ANY}
    ]


async def test_a_broker_that_does_not_acknowledge_is_a_503_to_retry(worker: Worker) -> None:
    worker.publisher.fail = True
    response = await worker.client.post("/events", json=_event("p", "u", "skip", "i"), headers=AUTH)
    assert response.status == 503 and (await response.json())["error"] == "produce_failed"


async def test_a_broker_that_never_answers_is_a_503_after_the_produce_timeout(
    world: SyntheticWorld,
) -> None:
    worker = await _start(world, {"RECLOOP__HTTP__TOKEN": TOKEN,
                                  "RECLOOP__HTTP__PRODUCE_TIMEOUT_S": "0.2"})  # fmt: skip
    try:
        worker.publisher.hang = True
        response = await worker.client.post(
            "/events", json=_event("p", "u", "skip", "i"), headers=AUTH
        )
        assert response.status == 503
        body = await response.json()
        assert body["error"] == "produce_failed" and "within 0.2s" in body["detail"]
    finally:
        await _stop(worker)


async def test_without_a_token_posting_is_off_and_reads_can_be_protected(
    world: SyntheticWorld,
) -> None:
    off = await _start(world, {})
    try:
        response = await off.client.post("/events", json=_event("p", "u", "skip", "i"))
        assert response.status == 403 and (await response.json())["error"] == "disabled"
    finally:
        await _stop(off)
    guarded = await _start(
        world, {"RECLOOP__HTTP__TOKEN": TOKEN, "RECLOOP__HTTP__PROTECT_READS": "true"}
    )
    try:
        await _feed(guarded, _event("e1", "u1", "click", world.items[0].item_id))
        assert (await guarded.client.get("/users/u1/recommendations")).status == 401
        answer = await guarded.client.get("/users/u1/recommendations", headers=AUTH)
        assert answer.status == 200
        assert (await guarded.client.get("/metrics")).status == 200  # operations stay open
    finally:
        await _stop(guarded)


# -- routing -------------------------------------------------------------------------------


async def test_a_user_owned_by_another_worker_is_served_by_it(world: SyntheticWorld) -> None:
    here = await _start(world, {"RECLOOP__HTTP__TOKEN": TOKEN}, port=7001)
    owner = await _start(world, {"RECLOOP__HTTP__TOKEN": TOKEN}, port=7002)
    try:
        await _feed(owner, _event("e1", "u1", "click", world.items[0].item_id))
        await _feed(here, _event("x1", "u2", "click", world.items[1].item_id))  # ready too
        here.owners["u1"] = owner.client.make_url("/")  # served at a random port
        response = await here.client.get("/users/u1/recommendations", params={"k": "2"})
        assert response.status == 200
        assert response.headers[SERVED_BY_HEADER] == "http://127.0.0.1:7002"
        assert parse_snapshot(await response.read()).source_event_id == "e1"
        here.owners["u3"] = owner.client.make_url("/")
        missing = await here.client.get("/users/u3/recommendations")
        assert missing.status == 404 and (await missing.json())["error"] == "unknown_user"
        here.owners["u4"] = URL("http://127.0.0.1:9/")  # nobody listens there
        down = await here.client.get("/users/u4/recommendations")
        assert down.status == 503 and (await down.json())["error"] == "owner_unreachable"
        # a request forwarded to a worker that does not own the user (the partition moved
        # meanwhile, or a client sent the header) is not answered as an unknown user
        moved = await here.client.get(
            "/users/u1/recommendations", headers={FORWARDED_HEADER: "http://127.0.0.1:7002"}
        )
        assert moved.status == 503 and (await moved.json())["error"] == "not_ready"
    finally:
        await _stop(here)
        await _stop(owner)


# -- operations ----------------------------------------------------------------------------


async def test_healthz_is_503_with_each_check_when_the_broker_is_unreachable(
    worker: Worker,
) -> None:
    response = await worker.client.get("/healthz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["agents"]["agents"]["events"] == "stopped"
    assert body["checks"]["ready"]["catalog_caught_up"] is False
    assert body["checks"]["lag"] == {
        "ok": True,
        "events": None,
        "max_healthy": None,
        "partitions": None,
        "unfetched": None,
    }


async def test_metrics_are_in_the_prometheus_format_with_the_scenario_values(
    worker: Worker, world: SyntheticWorld
) -> None:
    items = world.items
    await _feed(worker, _event("e1", "u1", "click", items[0].item_id), latency=0.02)
    shown = parse_snapshot(worker.emitter.to("snapshots")[-1].value or b"").items
    await _feed(
        worker,
        _event("e2", "u1", "impression", item_ids=[shown[0].item_id, shown[1].item_id]),
        _event("e3", "u1", "click", shown[0].item_id),
        _event("e1", "u1", "click", items[0].item_id),  # a duplicate
        {"event_id": "bad"},  # dead-lettered
        latency=0.15,
    )
    await worker.client.get("/users/nobody/recommendations")
    response = await worker.client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(await response.text())
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("recloop_events_total", outcome="processed") == 3
    assert value("recloop_events_total", outcome="duplicate") == 1
    assert value("recloop_events_total", outcome="dead_lettered") == 1
    assert value("recloop_dead_letters_total", reason="missing_type") == 1
    assert value("recloop_dead_letter_rate") == pytest.approx(1 / 5)
    assert value("recloop_recommended_impressions_total", cohort="cold") == 2
    assert value("recloop_recommended_clicks_total", cohort="cold") == 1
    assert value("recloop_ctr", cohort="all") == 0.5
    assert value("recloop_lists_total") == 3
    assert value("recloop_catalog_items") == len(world.items) - 1  # one is withdrawn
    assert value("recloop_index_items") == len(world.items) - 1  # ranking synced the index
    assert value("recloop_index_writes_total") >= value("recloop_index_items")
    assert value("recloop_index_tombstones") == worker.recloop.follower.catalog.index.tombstones
    assert value("recloop_index_compactions_total") == 0
    assert 0 < value("recloop_catalog_coverage") <= 1
    assert value("recloop_event_to_snapshot_seconds_count") == 3
    assert value("recloop_event_to_snapshot_seconds_bucket", le="0.02") == 1
    assert value("recloop_event_to_snapshot_seconds_bucket", le="0.2") == 3
    assert value("recloop_event_to_snapshot_recent_seconds", quantile="0.5") == pytest.approx(0.15)
    assert value("recloop_http_requests_total", route="recommendations", status="404") == 1
    model = worker.recloop.model.figures()  # learned from both clicks, test-then-train
    assert value("recloop_model_updates_total") == model["updates"] == 2
    assert value("recloop_model_likes_learned") == 2
    assert value("recloop_model_drifts_total") == 0
    assert value("recloop_model_roc_auc") == pytest.approx(model["roc_auc"])
    assert value("recloop_model_log_loss") == pytest.approx(model["log_loss"])


async def test_the_model_counters_count_from_the_workers_start(
    worker: Worker, world: SyntheticWorld
) -> None:
    # a worker that restored a model which had learned from 40 likes
    worker.recloop.model.updates = 40
    worker.recloop.model_at_start = (40, 0)
    await _feed(worker, _event("e1", "u1", "click", world.items[0].item_id))
    families = {f.name: f for f in LiveCollector(worker.recloop).collect()}

    assert families["recloop_model_updates"].samples[0].value == 1  # a counter: from 0
    assert families["recloop_model_likes_learned"].samples[0].value == 41  # the model's


async def test_every_exported_metric_is_documented(worker: Worker) -> None:
    names = {family.name for family in LiveCollector(worker.recloop).collect()}
    names |= {"recloop_http_requests", "recloop_metrics_errors"}
    documented = (ROOT / "docs" / "metrics.md").read_text()
    assert sorted(n for n in names if f"`{n}" not in documented) == []


async def test_the_metrics_timer_publishes_figures_and_the_ctr_since_the_last_record(
    worker: Worker, world: SyntheticWorld
) -> None:
    await _feed(worker, _event("e1", "u1", "click", world.items[0].item_id))
    await worker.recloop._metrics_timer()
    shown = parse_snapshot(worker.emitter.to("snapshots")[-1].value or b"").items
    await _feed(
        worker,
        _event("e2", "u1", "impression", item_ids=[i.item_id for i in shown[:4]]),
        _event("e3", "u1", "click", shown[0].item_id),
    )
    await worker.recloop._metrics_timer()

    records = worker.emitter.to("p.metrics")
    first, second = (json.loads(r.value or b"") for r in records)
    assert records[0].key == records[1].key and records[0].key.startswith(b"recloop@")  # type: ignore[union-attr]
    assert first["figures"]["worker"]["processed"] == 1 and "since_previous" not in first
    assert (first["figures"]["model"]["updates"], second["figures"]["model"]["updates"]) == (1, 2)
    assert second["figures"]["model"]["version"] == "logreg-2"
    assert second["since_previous"]["recommended_impressions"] == 4
    assert second["since_previous"]["ctr"] == 0.25
    assert second["since_previous"]["processed"] == 2


async def test_faust_table_views_are_not_served(worker: Worker, world: SyntheticWorld) -> None:
    # Faust's own /table/ views would hand out whole profiles with no token
    await _feed(worker, _event("e1", "u1", "click", world.items[0].item_id))
    for path in ("/table/users/u1/", "/table/snapshots/u1/", "/table/"):
        response = await worker.client.get(path)
        assert response.status == 404, path
        assert b"history" not in await response.read()


async def test_ping_answers_ok_with_no_work_even_before_the_worker_is_ready(
    worker: Worker,
) -> None:
    assert (await worker.client.get("/items/item-00001/similar")).status == 503  # not ready
    response = await worker.client.get("/ping")
    assert response.status == 200
    assert await response.json() == {"ok": True}
    assert response.headers[SERVED_BY_HEADER] == "http://127.0.0.1:6066"
    assert worker.emitter.to("snapshots") == []  # no state touched, nothing published


async def test_the_served_routes_are_the_described_ones(worker: Worker) -> None:
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in worker.client.server.app.router.routes()  # type: ignore[union-attr]
        if route.resource is not None and route.method in ("GET", "POST")
    }
    described = {(m, p) for p, ops in openapi_document()["paths"].items() for m in ops}
    assert described == {(op.method, op.path) for op in OPERATIONS}
    assert described <= served  # Faust serves its own routes too (/router/, /table/)
    response = await worker.client.get("/openapi.json")
    assert await response.json() == openapi_document()
    on_disk = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert on_disk == openapi_document(), "run: python -m pipeline.web docs/openapi.json"


async def test_an_event_over_the_size_limit_as_sent_is_refused_though_it_came_under_it(
    world: SyntheticWorld,
) -> None:
    # what is produced is the event re-encoded (schema_version added, 95000 as 95000.0)
    body = _event("big", "u1", "dwell", "item-00001", dwell_ms=95000, context={"surface": ""})
    body["context"] = {"surface": "s" * (256 - len(json.dumps(body, separators=(",", ":"))))}
    assert len(json.dumps(body, separators=(",", ":"))) == 256
    w = await _start(
        world, {"RECLOOP__HTTP__TOKEN": TOKEN, "RECLOOP__LIMITS__MAX_EVENT_BYTES": "256"}
    )
    try:
        response = await w.client.post("/events", json=body, headers=AUTH)
        assert response.status == 422
        assert (await response.json())["error"] == "too_large"
        assert w.publisher.records == []
    finally:
        await _stop(w)


async def test_a_method_a_route_does_not_take_gets_a_json_405_naming_the_allowed_ones(
    worker: Worker,
) -> None:
    for method, path, allowed in (
        ("GET", "/events", "POST"),
        ("DELETE", "/users/u1/recommendations", "GET"),
        ("PUT", "/ping", "GET"),
    ):
        response = await worker.client.request(method, path)
        assert response.status == 405
        assert response.headers["Allow"] == allowed
        assert (await response.json())["error"] == "method_not_allowed"
        assert response.headers[SERVED_BY_HEADER] == "http://127.0.0.1:6066"
