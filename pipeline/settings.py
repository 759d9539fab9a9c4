"""One frozen, typed settings object, loaded once at the entry point.

Values come from the defaults below, then a YAML file, then environment variables named
``RECLOOP__<SECTION>__<FIELD>`` (for example ``RECLOOP__KAFKA__BOOTSTRAP_SERVERS``).
Only :func:`load_settings` looks at the environment, and only at the mapping it is given.

Example:
    >>> s = load_settings(None, {"RECLOOP__KAFKA__PARTITIONS": "8"})
    >>> s.kafka.partitions
    8

"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from operators.catalog import ItemParams
from operators.deescalation import DeescalationParams
from operators.embedding import EmbeddingParams
from operators.ranking import RankingParams
from operators.signals import SignalRules

ENV_PREFIX = "RECLOOP__"


class Section(BaseModel):
    """Frozen, no unknown keys: a typo in a settings file is an error, not a silent default."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class KafkaSettings(Section):
    """Where the broker is and how recloop's topics are laid out."""

    bootstrap_servers: str | None = Field(
        default=None, description="host:port list; unset means the embedded broker."
    )
    topic_prefix: str = "recloop."
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    min_insync_replicas: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _replicas_can_be_in_sync(self) -> KafkaSettings:
        # more in-sync replicas than replicas: every acks=all write would be refused (the
        # setting is only applied to topics with more than one replica)
        if 1 < self.replication_factor < self.min_insync_replicas:
            raise ValueError(
                f"min_insync_replicas ({self.min_insync_replicas}) must be at most "
                f"replication_factor ({self.replication_factor})"
            )
        return self

    def topic(self, name: str) -> str:
        """The full name of one of recloop's topics."""
        return f"{self.topic_prefix}{name}"


class WorkerSettings(Section):
    """How a worker runs and where it keeps local state."""

    app_id: str = "recloop"
    state_dir: Annotated[Path, Field(strict=False)] = Path("var/state")
    store: str = Field(default="rocksdb://", description="Faust table store URL.")
    web_host: str = Field(default="127.0.0.1", description="0.0.0.0 in a container.")
    web_port: int = Field(default=6066, ge=0, le=65535)
    web_advertised_host: str | None = Field(
        default=None,
        description="The host other workers reach this one's HTTP API at (requests for "
        "users it owns are forwarded there); by default web_host, or this machine's host "
        "name when web_host is a wildcard (0.0.0.0, ::).",
    )
    web_enabled: bool = False
    commit_interval_s: float = Field(default=1.0, gt=0)
    checkpoint_s: float = Field(
        default=30.0,
        gt=0,
        description="How often the ranking model and the item index are saved to state_dir.",
    )
    batch_max: int = Field(
        default=500, ge=1, le=100_000,
        description="Most events an agent takes at once (one snapshot per user per batch).",
    )  # fmt: skip
    batch_window_ms: float = Field(
        default=5.0, gt=0, le=10_000,
        description="How long an agent waits for more events before processing what it has.",
    )  # fmt: skip
    item_batch_window_ms: float = Field(
        default=100.0, gt=0, le=60_000,
        description="How long the item agents gather feedback (one item-state per item per batch).",
    )  # fmt: skip
    session_timeout_s: float = Field(
        default=10.0, ge=6, le=1800,
        description="How long the group waits for a silent worker before its partitions "
        "move (Kafka's session.timeout.ms; the broker allows 6 s to 30 min).",
    )  # fmt: skip
    heartbeat_interval_s: float = Field(
        default=3.0, gt=0,
        description="How often a worker tells the group it is alive (under a third of "
        "session_timeout_s).",
    )  # fmt: skip
    log_level: Literal[
        "debug", "info", "warn", "warning", "error", "critical", "fatal", "notset"
    ] = Field(default="warn", description="The worker's log level (Faust's names, any case).")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _heartbeats_fit_in_a_session(self) -> WorkerSettings:
        heartbeats = self.heartbeat_interval_s * 3
        # a third exactly is allowed: 2.2 x 3 is 6.6000000000000005 in floating point
        if heartbeats > self.session_timeout_s and not math.isclose(
            heartbeats, self.session_timeout_s
        ):
            raise ValueError(
                f"heartbeat_interval_s ({self.heartbeat_interval_s}) must be at most a third "
                f"of session_timeout_s ({self.session_timeout_s})"
            )
        return self


class LimitSettings(Section):
    """What counts as valid input beyond the schema."""

    max_event_bytes: int = Field(default=64 * 1024, ge=256)
    max_future_skew_s: float = Field(default=300.0, ge=0)
    min_event_year: int = Field(default=1990, ge=1970)
    history_size: int = Field(default=200, ge=1, description="Recent items kept per user.")
    dedupe_window: int = Field(default=500, ge=1, description="Event ids kept per user.")
    max_categories: int = Field(default=64, ge=1, description="Category affinities per user.")
    max_blocked: int = Field(default=1000, ge=1, description="Not-relevant items kept per user.")
    recent_positives: int = Field(default=20, ge=1, le=1000, description="Recent likes kept.")
    consumed_capacity: int = Field(
        default=2000, ge=10, le=1_000_000,
        description="Items the per-user consumed-set filter holds at 1% false positives.",
    )  # fmt: skip
    uncatalogued_item_ttl_s: float = Field(
        default=ItemParams.uncatalogued_ttl_s, ge=0,
        description="How long the state of an item with no catalog record is kept after "
        "its newest signal (0: for ever).",
    )  # fmt: skip


_R = RankingParams  # the operators own the defaults; settings only bound and expose them


class RankingSettings(Section):
    """The ranker's knobs (see ``operators/ranking.py`` for what each one does)."""

    k: int = Field(default=_R.k, ge=1, le=200)
    recent_used: int = Field(default=_R.recent_used, ge=0, le=200)
    covisit_decay: float = Field(default=_R.covisit_decay, gt=0, le=1)
    covisit_alpha: float = Field(default=_R.covisit_alpha, ge=0, le=2)
    covisit_beta: float = Field(default=_R.covisit_beta, ge=0, le=2)
    covisit_candidates: int = Field(default=_R.covisit_candidates, ge=0, le=100_000)
    trending_weight: float = Field(default=_R.trending_weight, ge=0)
    trending_candidates: int = Field(default=_R.trending_candidates, ge=0, le=10_000)
    affinity_weight: float = Field(default=_R.affinity_weight, ge=0)
    affinity_categories: int = Field(default=_R.affinity_categories, ge=0, le=50)
    category_candidates: int = Field(default=_R.category_candidates, ge=0, le=10_000)
    popularity_half_life_s: float = Field(default=_R.popularity_half_life_s, gt=0)
    category_cap: int | None = Field(default=_R.category_cap, ge=1)
    model_weight: float = Field(default=_R.model_weight, ge=0, le=1)
    model_warmup: int = Field(default=_R.model_warmup, ge=0)
    model_negatives: int = Field(default=_R.model_negatives, ge=0, le=100)
    model_rerank: int = Field(default=_R.model_rerank, ge=1, le=1000)
    similarity_weight: float = Field(default=_R.similarity_weight, ge=0)
    embedding_candidates: int = Field(default=_R.embedding_candidates, ge=0, le=10_000)
    neighbour_sources: int = Field(default=_R.neighbour_sources, ge=0, le=100)
    neighbour_candidates: int = Field(default=_R.neighbour_candidates, ge=0, le=1000)
    fresh_candidates: int = Field(default=_R.fresh_candidates, ge=0, le=10_000)
    longtail_candidates: int = Field(
        default=_R.longtail_candidates, ge=0, le=10_000,
        description="Items just past the trending head, for a new user's exploration.",
    )  # fmt: skip
    fresh_window_s: float = Field(default=_R.fresh_window_s, gt=0)
    explore_min: float = Field(default=_R.explore_min, ge=0, le=1)
    explore_max: float = Field(default=_R.explore_max, ge=0, le=1)
    explore_halfway: int = Field(default=_R.explore_halfway, ge=1)
    explore_bonus: float = Field(default=_R.explore_bonus, ge=0)
    explore_categories: int = Field(
        default=_R.explore_categories, ge=0, le=100,
        description="Exploration slots that try a category drawn from the user's evidence.",
    )  # fmt: skip
    cold_start_items: int = Field(default=_R.cold_start_items, ge=0)
    cold_start_category_cap: int | None = Field(default=_R.cold_start_category_cap, ge=1)
    model_learning_rate: float = Field(default=0.05, gt=0)
    covisit_window: int = Field(default=20, ge=0, le=200)
    max_neighbours: int = Field(default=ItemParams.max_neighbours, ge=1, le=10_000)
    dwell_long_ms: float = Field(default=SignalRules.dwell_long_ms, gt=0)
    dwell_short_ms: float = Field(default=SignalRules.dwell_short_ms, gt=0)


_E = EmbeddingParams


class EmbeddingSettings(Section):
    """Item and user embeddings and the hnswlib index (``operators/embedding.py``)."""

    dim: int = Field(default=_E.dim, ge=2, le=1024)
    prior_weight: float = Field(default=_E.prior_weight, ge=0)
    feature_weight: float = Field(default=_E.feature_weight, ge=0)
    identity_weight: float = Field(default=_E.identity_weight, ge=0)
    user_decay: float = Field(default=_E.user_decay, gt=0, le=1)
    seed: int = Field(default=_E.seed, ge=0)
    reindex_below: float = Field(
        default=0.995, gt=0, le=1,
        description="Re-index an item when its embedding turned below this cosine.",
    )  # fmt: skip
    index_m: int = Field(default=16, ge=2, le=256)
    index_ef_construction: int = Field(default=200, ge=1)
    index_ef_search: int = Field(default=128, ge=1)


_D = DeescalationParams


class DeescalationSettings(Section):
    """How dissatisfaction changes a user's lists (``operators/deescalation.py``)."""

    half_life_s: float = Field(default=_D.half_life_s, gt=0)
    explicit_step: float = Field(default=_D.explicit_step, ge=0, le=1)
    too_many_step: float = Field(default=_D.too_many_step, ge=0, le=1)
    streak_step: float = Field(default=_D.streak_step, ge=0, le=1)
    streak_length: int = Field(default=_D.streak_length, ge=2, le=100)
    streak_gap_s: float = Field(default=_D.streak_gap_s, gt=0)
    max_penalty: float = Field(default=_D.max_penalty, ge=0, lt=1)
    relax_factor: float = Field(default=_D.relax_factor, ge=0, le=1)
    global_share: float = Field(default=_D.global_share, ge=0, le=1)
    time_of_day: bool = Field(
        default=_D.time_of_day,
        description="Scope penalties to the part of the day in the events' own UTC offset.",
    )
    neighbour_step: float = Field(default=_D.neighbour_step, ge=0, lt=1)
    neighbour_similarity: float = Field(default=_D.neighbour_similarity, ge=0, lt=1)
    max_disliked: int = Field(default=_D.max_disliked, ge=0, le=1000)
    floor: float = Field(default=_D.floor, gt=0, lt=1)
    max_penalties: int = Field(default=_D.max_penalties, ge=1, le=1000)
    max_pauses: int = Field(default=_D.max_pauses, ge=1, le=100_000)
    prompts_per_session: int = Field(default=_D.prompts_per_session, ge=0, le=100)
    prompts_per_day: int = Field(default=_D.prompts_per_day, ge=0, le=1000)
    prompt_gap_s: float = Field(default=_D.prompt_gap_s, ge=0)


class HttpSettings(Section):
    """The HTTP API each worker serves when ``worker.web_enabled`` (``pipeline/web.py``)."""

    token: str | None = Field(
        default=None,
        repr=False,
        min_length=16,
        description="Bearer token for POST /events; unset disables posting (403).",
    )
    protect_reads: bool = Field(
        default=False,
        description="Require the token on the recommendations and similar-items GETs too.",
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=256, le=64 * 1024 * 1024)
    max_batch: int = Field(default=500, ge=1, le=100_000, description="Events per POST.")
    max_k: int = Field(default=100, ge=1, le=10_000, description="Largest k a GET accepts.")
    forward_timeout_s: float = Field(
        default=5.0, gt=0, description="A request routed to the owning worker gives up then."
    )
    produce_timeout_s: float = Field(
        default=10.0, gt=0,
        description="POST /events answers 503 when the broker has not acknowledged by then.",
    )  # fmt: skip
    health_timeout_s: float = Field(
        default=2.0, gt=0, description="How long /healthz waits for the broker's metadata."
    )
    max_healthy_lag: int | None = Field(
        default=None, ge=0, description="Consumer lag above which /healthz answers 503."
    )


class MetricsSettings(Section):
    """Live metrics computed in the stream (``operators/live_metrics.py``)."""

    interval_s: float = Field(
        default=10.0, gt=0, description="How often each worker publishes to the metrics topic."
    )
    window_s: float = Field(
        default=3600.0, gt=0, description="Wall-clock window of catalog coverage."
    )
    window_lists: int = Field(
        default=1000, ge=1, le=1_000_000,
        description="Recent lists and latencies the rolling figures are computed over.",
    )  # fmt: skip
    cold_start_events: int = Field(
        default=5, ge=1, description="Users with fewer applied events count as cold-start."
    )
    reengage_within: int = Field(
        default=10, ge=1, description="A like within this many events re-engages a user."
    )
    max_users: int = Field(
        default=100_000, ge=1, description="Users whose re-engagement is tracked per worker."
    )


class Settings(Section):
    """Everything recloop can be told, in one object passed down from the entry point."""

    kafka: KafkaSettings = KafkaSettings()
    worker: WorkerSettings = WorkerSettings()
    limits: LimitSettings = LimitSettings()
    ranking: RankingSettings = RankingSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    deescalation: DeescalationSettings = DeescalationSettings()
    http: HttpSettings = HttpSettings()
    metrics: MetricsSettings = MetricsSettings()
    cache_dir: Annotated[Path | None, Field(strict=False)] = Field(
        default=None, description="Kafka jars and embedded broker data; default ~/.cache/recloop."
    )


class SettingsError(ValueError):
    """The settings file or an override is not valid."""


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key in sorted(env):  # sorted: the outcome never depends on the environment's order
        if not key.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingsError(f"{key} sets a field inside {part!r}, which is not a section")
            node = child
        if isinstance(node.get(path[-1]), dict):
            raise SettingsError(f"{key} would replace the whole section {path[-1]!r}")
        value = env[key]
        bare = value.strip()
        if (bare.startswith("#") or " #" in bare or "\t#" in bare) and bare[:1] not in "'\"":
            # YAML would read the rest as a comment: a token cut short, or dropped
            raise SettingsError(
                f"{key}: ' #' starts a YAML comment, which would cut the value short; "
                "quote it (\"'...'\") to keep every character"
            )
        try:
            # YAML scalars, as in the file: "8" is 8, "true" is True; quote to keep a string
            node[path[-1]] = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError as exc:
            raise SettingsError(f"{key}: not a YAML scalar ({exc.__class__.__name__})") from exc
    return tree


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(path: Path | None, env: Mapping[str, str]) -> Settings:
    """Build the settings from an optional YAML file and an environment mapping.

    Args:
        path: a YAML file, or ``None`` for defaults.
        env: the environment (pass ``os.environ`` from the entry point, or a dict in tests).

    Raises:
        SettingsError: the file is missing or malformed, or a value has the wrong type.

    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"cannot read settings file {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"settings file {path} must hold a mapping at the top")
        data = loaded
    data = _merge(data, _env_overrides(env))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(f"invalid settings: {exc}") from exc
