"""recloop's HTTP API, served by each worker's Faust web server (aiohttp).

=======  ====================================  ===========================================
method   path                                  what
=======  ====================================  ===========================================
GET      ``/users/{user_id}/recommendations``  the user's latest snapshot (``k``,
                                               ``surface``), from the worker that owns the
                                               user's partition
GET      ``/items/{item_id}/similar``          nearest items in embedding space (hnswlib)
POST     ``/events``                           validate and produce one event or a batch
GET      ``/healthz``                          broker, agents, readiness, consumer lag
GET      ``/ping``                             ``{"ok": true}``, no work (a reference for
                                               latency: ``scripts/bench_serving.py``)
GET      ``/metrics``                          Prometheus text format
GET      ``/openapi.json``                     this API's OpenAPI 3.1 description
=======  ====================================  ===========================================

The routes and the OpenAPI description come from one definition, :data:`OPERATIONS`.
Every error is JSON: ``{"error": <machine-readable reason>, "detail": <for people>, ...}``.
``docs/http.md`` describes the API for its users; ``python -m pipeline.web FILE`` writes
the description to a file (``docs/openapi.json``).

Routing: a user's snapshot lives in the ``snapshots`` table of the worker that owns the
user's partition (murmur2 of the user id, as for the events). A worker that does not own
it forwards the request there (Faust's table routing, done here so that the response
headers survive and a request is forwarded at most once).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import quote

import aiohttp
from aiohttp import web
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from pydantic import TypeAdapter, ValidationError
from yarl import URL

from operators.live_metrics import ShownList
from operators.profile import UserProfile
from operators.serving import needs_rerank, rank_for_surface
from operators.validation import InvalidEvent, decode_event, encode_event, user_key
from pipeline.metrics import assigned_partitions, unfetched_partitions
from pipeline.topics import partition_of
from schemas.events import EVENT_ADAPTER, Id, ShortText
from schemas.snapshot import Snapshot, parse_snapshot, snapshot_to_json

if TYPE_CHECKING:
    from pipeline.app import Recloop

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"
JSON_TYPE = "application/json"
#: set on a request one worker forwards to the owner of the user: it is never forwarded again
FORWARDED_HEADER = "X-Recloop-Forwarded-By"
SERVED_BY_HEADER = "X-Recloop-Served-By"
SURFACE_HEADER = "X-Recloop-Surface"
RERANKED_HEADER = "X-Recloop-Reranked"

_ID = TypeAdapter(Id)
_SURFACE = TypeAdapter(ShortText)


# -- latest snapshots, as the events agent stores them ----------------------------------


def encode_latest(surface: str | None, snapshot: Snapshot, snapshot_json: bytes) -> bytes:
    """The ``snapshots`` table value: three parts, the first two ending in a newline.

    The surface the list was ranked for (empty: none), the list's items and categories
    (:meth:`operators.live_metrics.ShownList.encode`, so the live metrics read the
    previous list without parsing JSON), and the snapshot's JSON as the topic carries
    it. Surfaces and ids hold no control characters (the contracts forbid them), so
    each newline ends a part.
    """
    return b"%b\n%b\n%b" % (
        (surface or "").encode(),
        ShownList.of(snapshot).encode(),
        snapshot_json,
    )


def decode_latest(value: bytes) -> tuple[str | None, ShownList, bytes]:
    """The surface, the list and the snapshot JSON that :func:`encode_latest` stored."""
    surface, _, rest = value.partition(b"\n")
    shown, _, snapshot_json = rest.partition(b"\n")
    return surface.decode() or None, ShownList.decode(shown), snapshot_json


# -- the description: one definition for the routes and the OpenAPI document -----------


@dataclass(frozen=True)
class Param:
    """One path or query parameter."""

    name: str
    where: Literal["path", "query"]
    description: str
    schema: Mapping[str, Any]
    required: bool = False


@dataclass(frozen=True)
class Answer:
    """One response an operation can give."""

    description: str
    schema: str | None = "Error"
    content_type: str = JSON_TYPE
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    """One route: its method, path (OpenAPI syntax, which aiohttp shares) and responses."""

    method: Literal["get", "post"]
    path: str
    handler: str
    summary: str
    description: str
    responses: Mapping[int, Answer]
    parameters: tuple[Param, ...] = ()
    request_schema: str | None = None
    #: "write": the bearer token always; "read": when ``http.protect_reads``
    auth: Literal["none", "read", "write"] = "none"
    tags: tuple[str, ...] = field(default=("recommendations",))


_K = {"type": "integer", "minimum": 1}
_USER = Param("user_id", "path", "The user's id, as in the events.", {"type": "string"}, True)
_ITEM = Param("item_id", "path", "The item's id, as in the catalog.", {"type": "string"}, True)
_UNAUTHORIZED = {
    401: Answer("Missing or wrong bearer token (`unauthorized`).", headers=("WWW-Authenticate",)),
    403: Answer("The endpoint is disabled: no token is configured (`disabled`)."),
}
_NOT_READY = Answer("The worker is starting, recovering or rebalancing (`not_ready`).")

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get",
        "/users/{user_id}/recommendations",
        "recommendations",
        "The user's latest recommendations",
        "The latest snapshot of the user (the JSON the snapshots topic carries), its list "
        "cut to `k` items. Served by the worker that owns the user's partition; any "
        "worker forwards there. With `surface`, a list ranked for another surface is "
        "ranked anew when the user holds a penalty scoped to a surface "
        f"(`{RERANKED_HEADER}: true`); otherwise the stored list is right on every "
        f"surface. `{SURFACE_HEADER}` names the surface the list is for (percent-encoded), "
        f"`{SERVED_BY_HEADER}` the worker that answered.",
        {
            200: Answer(
                "The snapshot.",
                "Snapshot",
                headers=(SURFACE_HEADER, RERANKED_HEADER, SERVED_BY_HEADER),
            ),
            400: Answer("A parameter is invalid (`invalid_parameter`)."),
            404: Answer("No event of this user has reached recloop (`unknown_user`)."),
            503: Answer(
                "Not ready, or the owning worker is unreachable (`not_ready`, `owner_unreachable`)."
            ),
            **_UNAUTHORIZED,
        },
        (
            _USER,
            Param("k", "query", "How many items (at most the snapshot's).", _K),
            Param(
                "surface",
                "query",
                "Where the list will be shown (`context.surface`).",
                {"type": "string", "maxLength": 256},
            ),
        ),
        auth="read",
    ),
    Operation(
        "get",
        "/items/{item_id}/similar",
        "similar",
        "Items similar to an item",
        "The available items nearest to the item in embedding space (the worker's hnswlib "
        "index; every worker holds every item), most similar first, with their cosine.",
        {
            200: Answer("The similar items.", "SimilarItems"),
            400: Answer("A parameter is invalid (`invalid_parameter`)."),
            404: Answer(
                "The catalog does not have the item, or it was withdrawn "
                "(`unknown_item`, `item_unavailable`)."
            ),
            503: _NOT_READY,
            **_UNAUTHORIZED,
        },
        (_ITEM, Param("k", "query", "How many items (default 10).", _K)),
        auth="read",
    ),
    Operation(
        "post",
        "/events",
        "post_events",
        "Send events",
        "Validates one event (a JSON object) or a batch (a JSON array) with the rules the "
        "events agent applies, then produces every event to the events topic keyed by "
        "user id, and answers once the broker acknowledged them all. A batch is all or "
        "nothing: one invalid event rejects it, with the index of each invalid one. Event "
        "ids make a retry safe (duplicates are applied once).",
        {
            202: Answer("Produced and acknowledged.", "Accepted"),
            400: Answer(
                "The body is not JSON, or not an object or a non-empty array "
                "(`invalid_json`, `invalid_body`, `empty_batch`)."
            ),
            413: Answer(
                "The body or the batch is too large (`body_too_large`, `batch_too_large`)."
            ),
            415: Answer("The body is not `application/json` (`unsupported_media_type`)."),
            422: Answer(
                "An event is invalid: `error` is its reason (as on the dead-letter "
                "topic), `index` its place in the batch, `errors` the first 100 invalid "
                "ones, `rejected` how many there were.",
                "EventErrors",
            ),
            503: Answer("The broker did not acknowledge (`produce_failed`); retry."),
            **_UNAUTHORIZED,
        },
        request_schema="EventOrBatch",
        auth="write",
        tags=("events",),
    ),
    Operation(
        "get",
        "/healthz",
        "healthz",
        "Health",
        "200 when the broker answers, every agent runs, the worker is ready (catalog "
        "caught up, not recovering), the consumer has fetched every events partition it "
        "was assigned and its lag is within `http.max_healthy_lag`; 503 otherwise. The "
        "body details each check.",
        {200: Answer("Healthy.", "Health"), 503: Answer("Unhealthy.", "Health")},
        tags=("operations",),
    ),
    Operation(
        "get",
        "/ping",
        "ping",
        "Ping",
        '`{"ok": true}` and nothing else: no state, no broker, no auth. The cost of the '
        "web server itself, which `scripts/bench_serving.py` measures beside the "
        "recommendations.",
        {200: Answer("Always.", "Pong")},
        tags=("operations",),
    ),
    Operation(
        "get",
        "/metrics",
        "metrics",
        "Metrics",
        "Every metric of this worker in the Prometheus text format (see docs/metrics.md).",
        {200: Answer("The metrics.", None, "text/plain; version=0.0.4")},
        tags=("operations",),
    ),
    Operation(
        "get",
        "/openapi.json",
        "openapi",
        "This description",
        "The OpenAPI 3.1 description of this API.",
        {200: Answer("The description.", None)},
        tags=("operations",),
    ),
)


def _error_schemas() -> dict[str, Any]:
    error = {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "description": "Machine-readable reason."},
            "detail": {"type": "string", "description": "What went wrong, for people."},
        },
        "additionalProperties": True,
    }
    event_error = {
        "type": "object",
        "required": ["index", "error", "detail"],
        "properties": {
            "index": {"type": "integer", "description": "Place in the batch (0 for one)."},
            "error": {"type": "string", "description": "The dead-letter reason."},
            "detail": {"type": "string"},
        },
    }
    return {
        "Error": error,
        "EventError": event_error,
        "EventErrors": {
            "allOf": [
                {"$ref": "#/components/schemas/Error"},
                {
                    "type": "object",
                    "required": ["index", "errors", "accepted"],
                    "properties": {
                        "index": {"type": "integer"},
                        "errors": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/EventError"},
                        },
                        "accepted": {"const": 0},
                    },
                },
            ]
        },
    }


def _schemas() -> dict[str, Any]:
    template = "#/components/schemas/{model}"
    snapshot = Snapshot.model_json_schema(ref_template=template)
    event = EVENT_ADAPTER.json_schema(ref_template=template)
    schemas: dict[str, Any] = {**snapshot.pop("$defs", {}), **event.pop("$defs", {})}
    schemas["Snapshot"] = snapshot
    schemas["Event"] = event
    schemas["EventOrBatch"] = {
        "oneOf": [
            {"$ref": "#/components/schemas/Event"},
            {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Event"}},
        ]
    }
    schemas["Accepted"] = {
        "type": "object",
        "required": ["accepted", "event_ids"],
        "properties": {
            "accepted": {"type": "integer"},
            "event_ids": {"type": "array", "items": {"type": "string"}},
        },
    }
    schemas["SimilarItems"] = {
        "type": "object",
        "required": ["item_id", "k", "items"],
        "properties": {
            "item_id": {"type": "string"},
            "k": {"type": "integer"},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["item_id", "score"],
                    "properties": {
                        "item_id": {"type": "string"},
                        "score": {"type": "number", "description": "Cosine similarity."},
                        "category": {"type": ["string", "null"]},
                    },
                },
            },
        },
    }
    schemas["Pong"] = {
        "type": "object",
        "required": ["ok"],
        "properties": {"ok": {"const": True}},
    }
    schemas["Health"] = {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ok", "unavailable"]},
            "checks": {
                "type": "object",
                "description": "broker, agents, ready, lag: each with `ok` and details.",
                "additionalProperties": {
                    "type": "object",
                    "required": ["ok"],
                    "properties": {"ok": {"type": "boolean"}},
                },
            },
        },
    }
    schemas.update(_error_schemas())
    return dict(sorted(schemas.items()))


def _parameter(param: Param) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": param.where,
        "required": param.required,
        "description": param.description,
        "schema": dict(param.schema),
    }


def _response(answer: Answer) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if answer.schema is not None:
        content["schema"] = {"$ref": f"#/components/schemas/{answer.schema}"}
    out: dict[str, Any] = {
        "description": answer.description,
        "content": {answer.content_type: content},
    }
    if answer.headers:
        out["headers"] = {name: {"schema": {"type": "string"}} for name in answer.headers}
    return out


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route in :data:`OPERATIONS`."""
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        entry: dict[str, Any] = {
            "operationId": op.handler,
            "summary": op.summary,
            "description": op.description,
            "tags": list(op.tags),
            "responses": {str(code): _response(a) for code, a in sorted(op.responses.items())},
        }
        if op.parameters:
            entry["parameters"] = [_parameter(p) for p in op.parameters]
        if op.request_schema is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {
                    JSON_TYPE: {"schema": {"$ref": f"#/components/schemas/{op.request_schema}"}}
                },
            }
        if op.auth == "write":
            entry["security"] = [{"bearer": []}]
        elif op.auth == "read":
            entry["security"] = [{}, {"bearer": []}]  # the token only with protect_reads
        paths.setdefault(op.path, {})[op.method] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "recloop",
            "version": API_VERSION,
            "description": "Each recloop worker's HTTP API (docs/http.md).",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


# -- the collaborators a worker gives the API -------------------------------------------


class HttpError(Exception):
    """An error answer: status, machine-readable reason, detail and extra fields."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.body = {"error": error, "detail": detail, **extra}
        self.headers = dict(headers or {})


class NotReady(Exception):
    """The worker does not know yet who owns a key (it has no assignment)."""


class EventPublisher(Protocol):
    """Where POST /events sends validated events: the events topic in production."""

    async def publish(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Produce ``(key, value)`` records; return once the broker acknowledged them all."""


class TopicPublisher:
    """Produces through a Faust topic and waits for every acknowledgement."""

    def __init__(self, topic: Any) -> None:
        self._topic = topic

    async def publish(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Send every record, then wait for all the acknowledgements."""
        pending = [await self._topic.send(key=key, value=value) for key, value in records]
        await asyncio.gather(*pending)


Owner = Callable[[str], URL | None]


class TableOwner:
    """Which worker owns a key of a table: ``None`` for this one, else its URL.

    The partition is murmur2 of the key, as for the events (so the changelog partition
    the events agent wrote to); the owner comes from the assignment Faust shares with
    every member (``app.router.table_metadata``).
    """

    def __init__(self, app: Any, table: str, partitions: int) -> None:
        self._app = app
        self._table = table
        self._partitions = partitions

    def __call__(self, key: str) -> URL | None:
        """The URL of the worker that owns ``key``; ``None`` when it is this one."""
        partition = partition_of(key.encode(), self._partitions)
        try:
            metadata = self._app.router.table_metadata(self._table)
        except Exception as exc:  # no assignment yet
            raise NotReady(str(exc) or exc.__class__.__name__) from exc
        for url, topics in metadata.items():
            if any(partition in partitions for partitions in topics.values()):
                return None if _same_node(URL(url), self._app.conf.canonical_url) else URL(url)
        raise NotReady(f"no worker owns partition {partition} yet")


def _same_node(a: URL, b: URL) -> bool:
    return (a.host, a.port) == (b.host, b.port)


# -- the handlers -----------------------------------------------------------------------


def _json(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type=JSON_TYPE,
        headers=dict(headers or {}),
    )


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


#: Methods a route that does not take them answers with 405 (HEAD and OPTIONS stay
#: the web server's: HEAD of a GET route is answered as the GET).
_OTHER_METHODS = ("get", "post", "put", "patch", "delete", "search")


class HttpApi:
    """The handlers of :data:`OPERATIONS`, bound to one worker.

    Args:
        recloop: the worker.
        publisher: where POST /events goes (the events topic by default).
        owner: who owns a user (Faust's assignment by default; ``None`` means here).

    """

    def __init__(
        self,
        recloop: Recloop,
        publisher: EventPublisher | None = None,
        owner: Owner | None = None,
    ) -> None:
        self.recloop = recloop
        self.settings = recloop.settings.http
        self.publisher = publisher or TopicPublisher(recloop.events_topic)
        self.owner: Owner = owner or TableOwner(
            recloop.app, "snapshots", recloop.settings.kafka.partitions
        )
        self._document = json.dumps(openapi_document(), separators=(",", ":")).encode()
        self._admin: Any = None

    # -- plumbing ---------------------------------------------------------------------------

    def register(self, app: Any) -> None:
        """Add every route to the Faust app's web server (one view per path)."""
        from faust import web as faust_web

        by_path: dict[str, dict[str, Callable[..., Awaitable[web.StreamResponse]]]] = {}
        for op in OPERATIONS:
            by_path.setdefault(op.path, {})[op.method] = self._view_method(op)
        for n, (path, methods) in enumerate(by_path.items()):
            refused = self._not_allowed(sorted(m.upper() for m in methods))
            others = {m: refused for m in _OTHER_METHODS if m not in methods}
            view = type(f"RecloopView{n}", (faust_web.View,), {**others, **methods})
            app.page(path, name=f"recloop-{n}")(view)

    def _not_allowed(self, allowed: list[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
        """A handler answering 405 in the API's JSON form, naming the methods allowed."""

        async def method(view: Any, request: web.Request, **_match: str) -> web.StreamResponse:
            response = _json(
                405,
                {"error": "method_not_allowed",
                 "detail": f"{request.method} is not allowed here; use {', '.join(allowed)}"},
                {"Allow": ", ".join(allowed)},
            )  # fmt: skip
            self._stamp(response)
            return response

        return method

    def _view_method(self, op: Operation) -> Callable[..., Awaitable[web.StreamResponse]]:
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]] = getattr(self, op.handler)

        async def method(view: Any, request: web.Request, **_match: str) -> web.StreamResponse:
            return await self.dispatch(op, handler, request)

        return method

    async def dispatch(
        self,
        op: Operation,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        request: web.Request,
    ) -> web.StreamResponse:
        """Run one handler: check its auth, turn errors into JSON answers, count it."""
        try:
            if op.auth == "write" or (op.auth == "read" and self.settings.protect_reads):
                self._authorize(request)
            response = await handler(request)
        except HttpError as exc:
            response = _json(exc.status, exc.body, exc.headers)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = _json(500, {"error": "internal_error", "detail": "see the worker's log"})
        self._stamp(response)
        self.recloop.exporter.http_requests.labels(op.handler, str(response.status)).inc()
        return response

    def _stamp(self, response: web.StreamResponse) -> None:
        """Name this worker in the answer (a forwarded answer keeps the owner's name)."""
        if SERVED_BY_HEADER not in response.headers:
            response.headers[SERVED_BY_HEADER] = str(self.recloop.app.conf.canonical_url)

    def _authorize(self, request: web.Request) -> None:
        token = self.settings.token
        if token is None:
            raise HttpError(403, "disabled", "no http.token is configured: this endpoint is off")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            # a header's bytes that are not UTF-8 arrive surrogate-escaped: never equal
            given.strip().encode("utf-8", "surrogateescape"),
            token.encode(),
        ):
            raise HttpError(
                401,
                "unauthorized",
                "send the token as 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": 'Bearer realm="recloop"'},
            )

    @staticmethod
    def _id(request: web.Request, name: str) -> str:
        value = request.match_info[name]
        try:
            return _ID.validate_python(value)
        except ValidationError:
            raise HttpError(
                400, "invalid_parameter", f"{name} is not a valid id", parameter=name
            ) from None

    def _k(self, request: web.Request, default: int | None) -> int | None:
        raw = request.query.get("k")
        if raw is None:
            return default
        limit = self.settings.max_k
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not 1 <= int(raw) <= limit:
            raise HttpError(
                400, "invalid_parameter", f"k must be an integer from 1 to {limit}", parameter="k"
            )
        return int(raw)

    def _ready(self) -> None:
        app = self.recloop.app
        if not self.recloop.ready or getattr(app, "in_recovery", False):
            raise HttpError(503, "not_ready", "the worker is starting or recovering its state")

    # -- GET /users/{user_id}/recommendations --------------------------------------------

    async def recommendations(self, request: web.Request) -> web.StreamResponse:
        """The user's latest snapshot, from the worker that owns the user."""
        user_id = self._id(request, "user_id")
        k = self._k(request, None)
        surface = request.query.get("surface")
        if surface is not None:
            try:
                surface = _SURFACE.validate_python(surface) or None
            except ValidationError:
                raise HttpError(
                    400,
                    "invalid_parameter",
                    "surface must be printable text of at most 256 characters",
                    parameter="surface",
                ) from None
        try:
            owner = self.owner(user_id)
        except NotReady as exc:
            raise HttpError(503, "not_ready", f"partition owners unknown: {exc}") from None
        if owner is not None:
            if FORWARDED_HEADER in request.headers:  # forwarded once already: never again
                raise HttpError(
                    503,
                    "not_ready",
                    f"this worker does not own {user_id!r}'s partition (it is moving "
                    "between workers); retry",
                )
            return await self._forward(request, owner)
        self._ready()
        return self._latest(user_id, k, surface)

    def _latest(self, user_id: str, k: int | None, surface: str | None) -> web.Response:
        recloop = self.recloop
        stored = recloop.snapshots.get(user_id)
        if stored is None:
            raise HttpError(
                404,
                "unknown_user",
                f"no snapshot for {user_id!r}: no event of theirs reached recloop",
                user_id=user_id,
            )
        ranked_for, _, body = decode_latest(stored)
        reranked = False
        profile_bytes = recloop.users.get(user_id) if surface else None
        if profile_bytes is not None:
            profile = UserProfile.restore(profile_bytes)
            if needs_rerank(profile, ranked_for, surface):
                assert surface is not None
                snapshot = rank_for_surface(
                    parse_snapshot(body),
                    profile,
                    recloop.follower.catalog,
                    recloop.config,
                    surface,
                    recloop.clock(),
                    recloop.model,
                )
                body, reranked = snapshot_to_json(snapshot), True
        if k is not None:
            document = json.loads(body)
            if len(document["items"]) > k:
                document["items"] = document["items"][:k]
                body = json.dumps(document, separators=(",", ":")).encode()
        headers = {
            RERANKED_HEADER: "true" if reranked else "false",
            SERVED_BY_HEADER: str(recloop.app.conf.canonical_url),
        }
        if surface or ranked_for:
            headers[SURFACE_HEADER] = quote(surface or ranked_for or "", safe="")
        return web.Response(body=body, content_type=JSON_TYPE, headers=headers)

    async def _forward(self, request: web.Request, owner: URL) -> web.StreamResponse:
        url = request.url.with_scheme(owner.scheme or "http").with_host(owner.host or "")
        url = url.with_port(owner.port)
        headers = {FORWARDED_HEADER: str(self.recloop.app.conf.canonical_url)}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        timeout = aiohttp.ClientTimeout(total=self.settings.forward_timeout_s)
        try:
            session = self.recloop.app.http_client
            async with session.get(url, headers=headers, timeout=timeout) as answer:
                body = await answer.read()
                kept = {
                    k: v
                    for k, v in answer.headers.items()
                    if k.lower().startswith("x-recloop-") or k == "WWW-Authenticate"
                }
                return web.Response(
                    body=body, status=answer.status, content_type=answer.content_type, headers=kept
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HttpError(
                503,
                "owner_unreachable",
                f"the worker owning this user ({owner}) did not answer: {exc!r}",
                owner=str(owner),
            ) from None

    # -- GET /items/{item_id}/similar -----------------------------------------------------

    async def similar(self, request: web.Request) -> web.StreamResponse:
        """The items nearest to one item in embedding space."""
        item_id = self._id(request, "item_id")
        k = self._k(request, 10)
        assert k is not None
        self._ready()
        catalog = self.recloop.follower.catalog
        state = catalog.get(item_id)
        if state is None or state.record is None:  # feedback alone names no catalog item
            raise HttpError(
                404, "unknown_item", f"the catalog has no item {item_id!r}", item_id=item_id
            )
        if not state.available:
            raise HttpError(
                404, "item_unavailable", f"item {item_id!r} was withdrawn", item_id=item_id
            )
        items = []
        for other, score in catalog.neighbours(item_id, k):
            found = catalog.get(other)
            items.append(
                {
                    "item_id": other,
                    "score": round(score, 6),
                    "category": found.category if found is not None else None,
                }
            )
        return _json(200, {"item_id": item_id, "k": k, "items": items})

    # -- POST /events ---------------------------------------------------------------------

    async def post_events(self, request: web.Request) -> web.StreamResponse:
        """Validate one event or a batch and produce it to the events topic."""
        if request.content_type != JSON_TYPE:
            raise HttpError(
                415, "unsupported_media_type", f"send {JSON_TYPE}, not {request.content_type!r}"
            )
        body = await self._body(request)
        try:
            parsed = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise HttpError(400, "invalid_json", f"the body is not JSON: {exc!r}") from None
        if isinstance(parsed, dict):
            elements: list[Any] = [parsed]
        elif isinstance(parsed, list):
            elements = parsed
            if not elements:
                raise HttpError(400, "empty_batch", "the batch holds no event")
            if len(elements) > self.settings.max_batch:
                raise HttpError(
                    413,
                    "batch_too_large",
                    f"{len(elements)} events; at most {self.settings.max_batch} per request",
                )
        else:
            raise HttpError(400, "invalid_body", "send an event (object) or a batch (array)")
        records, errors = self._validate(elements)
        if errors:
            first = errors[0]
            raise HttpError(
                422,
                first["error"],
                first["detail"],
                index=first["index"],
                errors=errors[:100],
                rejected=len(errors),
                accepted=0,
            )
        try:
            # a broker that is down would keep the request for the producer's own
            # timeout (20 minutes in Faust); what went out may still arrive: a retry
            # with the same event ids is safe
            await asyncio.wait_for(
                self.publisher.publish([(key, value) for key, value, _ in records]),
                self.settings.produce_timeout_s,
            )
        except Exception as exc:
            why = (
                f"within {self.settings.produce_timeout_s:g}s"
                if isinstance(exc, TimeoutError)
                else f"({exc!r})"
            )
            log.warning("POST /events: producing failed: not acknowledged %s", why)
            raise HttpError(
                503,
                "produce_failed",
                f"the broker did not acknowledge every event {why}; retry the request: "
                "event ids make it safe",
            ) from None
        return _json(202, {"accepted": len(records), "event_ids": [e for _, _, e in records]})

    async def _body(self, request: web.Request) -> bytes:
        limit = self.settings.max_body_bytes
        too_large = HttpError(413, "body_too_large", f"the body is over {limit} bytes", limit=limit)
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)

    def _validate(
        self, elements: Sequence[Any]
    ) -> tuple[list[tuple[bytes, bytes, str]], list[dict[str, Any]]]:
        now = self.recloop.clock()
        records: list[tuple[bytes, bytes, str]] = []
        errors: list[dict[str, Any]] = []
        for index, element in enumerate(elements):
            try:
                raw = json.dumps(element, separators=(",", ":"), ensure_ascii=False).encode()
            except UnicodeEncodeError as exc:  # a lone surrogate escape (\ud800)
                errors.append({"index": index, "error": "invalid_utf8", "detail": str(exc)})
                continue
            try:
                event = decode_event(
                    raw, key=user_key(element), now=now, limits=self.recloop.limits
                )
                value = encode_event(event, self.recloop.limits)  # what is produced
            except InvalidEvent as exc:
                errors.append({"index": index, "error": exc.reason, "detail": exc.detail})
                continue
            records.append((event.user_id.encode(), value, event.event_id))
        return records, errors

    # -- operations -----------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """Broker, agents, readiness and lag, each with its verdict."""
        recloop = self.recloop
        loop = asyncio.get_running_loop()
        broker_ok, broker_detail = await loop.run_in_executor(None, self._broker_check)
        agents = {name: _agent_state(agent) for name, agent in recloop.app.agents.items()}
        recovering = bool(getattr(recloop.app, "in_recovery", False))
        lag = recloop.consumer_lag()
        limit = self.settings.max_healthy_lag
        events_topic = recloop.topic_names["events"]
        unfetched = unfetched_partitions(recloop.app, events_topic)
        checks: dict[str, dict[str, Any]] = {
            "broker": {"ok": broker_ok, "detail": broker_detail},
            "agents": {"ok": all(s == "running" for s in agents.values()), "agents": agents},
            "ready": {
                "ok": recloop.ready and not recovering,
                "catalog_caught_up": recloop.ready,
                "recovering": recovering,
                "catalog_items": recloop.exporter.available_items(recloop.follower.catalog),
            },
            "lag": {
                "ok": (limit is None or lag is None or lag <= limit) and not unfetched,
                "events": lag,
                "max_healthy": limit,
                "partitions": assigned_partitions(recloop.app, events_topic),
                "unfetched": unfetched,
            },
        }
        healthy = all(check["ok"] for check in checks.values())
        body = {"status": "ok" if healthy else "unavailable", "checks": checks}
        return _json(200 if healthy else 503, body)

    def _broker_check(self) -> tuple[bool, str]:
        """Ask the broker for its metadata (in a thread: it blocks up to the timeout)."""
        if self._admin is None:
            bootstrap = self.recloop.settings.kafka.bootstrap_servers
            assert bootstrap is not None  # the worker refuses to start without it
            self._admin = AdminClient({"bootstrap.servers": bootstrap})
        try:
            metadata = self._admin.list_topics(timeout=self.settings.health_timeout_s)
        except KafkaException as exc:
            return False, f"no metadata from the broker: {exc}"
        return True, f"{len(metadata.brokers)} broker(s) answered"

    async def ping(self, request: web.Request) -> web.StreamResponse:
        """``{"ok": true}``: the web server's own cost, for comparison."""
        return web.Response(body=b'{"ok":true}', content_type=JSON_TYPE)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        """Every metric in the Prometheus text format."""
        response = web.Response(body=self.recloop.exporter.exposition())
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        """The OpenAPI description."""
        return web.Response(body=self._document, content_type=JSON_TYPE)


def _agent_state(agent: Any) -> str:
    if getattr(agent, "crashed", False):
        return "crashed"
    if getattr(agent, "started", False) and not getattr(agent, "should_stop", False):
        return "running"
    return "stopped"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the OpenAPI description to the file named (or to stdout)."""
    args = list(sys.argv[1:] if argv is None else argv)
    text = json.dumps(openapi_document(), indent=2, sort_keys=False) + "\n"
    if args:
        Path(args[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
