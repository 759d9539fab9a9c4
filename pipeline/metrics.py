"""A worker's metrics: Prometheus text format for ``GET /metrics`` and the metrics topic.

Everything is read when scraped or published, never pushed from the events agent: the
agent only updates :class:`operators.live_metrics.LiveMetrics` (plain counters) and
:class:`pipeline.app.WorkerStats`. Each app has its own ``CollectorRegistry``, so
several apps in one process (tests) never share or collide on metrics. Every name is
documented in ``docs/metrics.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Iterator, Mapping
from datetime import UTC
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from operators.catalog import Catalog
from operators.live_metrics import QUANTILES, Histogram
from operators.model import METRICS_WINDOW

if TYPE_CHECKING:
    from pipeline.app import Recloop

log = logging.getLogger(__name__)

#: Schema version of the records on the metrics topic.
METRICS_RECORD_VERSION = 1


def consumer_lag(app: Any, topic: str) -> int | None:
    """Messages of ``topic`` this worker has not read yet, over its assigned partitions.

    The log end offset comes from the consumer's latest fetch; the position is one past
    the last offset read (or the last commit, for a partition not read since start).
    ``None`` when the consumer is not running or knows no partition of the topic yet.
    """
    try:
        consumer = app.consumer
        assigned = [tp for tp in consumer.assignment() if tp.topic == topic]
    except Exception:  # not started (or stopping): nothing to say
        return None
    monitor = app.monitor
    total, known = 0, False
    for tp in assigned:
        try:
            end = consumer.highwater(tp)
        except Exception:
            continue
        read = monitor.tp_read_offsets.get(tp)
        position = read + 1 if read is not None else monitor.tp_committed_offsets.get(tp)
        if end is None or position is None:
            continue
        total += max(0, int(end) - int(position))
        known = True
    return total if known else None


class AvailableItems:
    """Recommendable items in a catalog, counted again only when the catalog changed.

    Ids that only ever received feedback (no catalog record) and withdrawn items do not
    count, as in the offline evaluation's coverage.
    """

    def __init__(self) -> None:
        self._counted: tuple[int, int] | None = None  # (catalog version, count)

    def __call__(self, catalog: Catalog) -> int:
        """The count for ``catalog`` as it is now."""
        if self._counted is None or self._counted[0] != catalog.version:
            self._counted = (catalog.version, sum(1 for state in catalog if state.available))
        return self._counted[1]


def assigned_partitions(app: Any, topic: str) -> list[int] | None:
    """The partitions of ``topic`` assigned to this worker (``None``: not running)."""
    try:
        return sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == topic)
    except Exception:
        return None


def unfetched_partitions(app: Any, topic: str) -> list[int] | None:
    """Assigned partitions of ``topic`` the consumer has had no fetch response for yet.

    Every fetch response carries the partition's log end offset, so a partition without
    one was never fetched: briefly after an assignment, or for good when the consumer
    is stuck (faust-streaming issues #471, #629). ``None`` when not running.
    """
    try:
        consumer = app.consumer
        assigned = [tp for tp in consumer.assignment() if tp.topic == topic]
        return sorted(tp.partition for tp in assigned if consumer.highwater(tp) is None)
    except Exception:
        return None


def worker_figures(recloop: Recloop) -> dict[str, Any]:
    """The worker's figures, JSON-ready: processing counts, dead letters, consumer lag."""
    stats = recloop.stats
    seen = stats.processed + stats.duplicates + stats.dead_lettered
    return {
        "processed": stats.processed,
        "duplicates": stats.duplicates,
        "dead_lettered": stats.dead_lettered,
        "dead_letter_reasons": dict(sorted(stats.dead_letter_reasons.items())),
        "dead_letter_rate": stats.dead_lettered / seen if seen else None,
        "item_updates": stats.item_updates,
        "items_expired": stats.items_expired,
        "consumer_lag": recloop.consumer_lag(),
    }


def model_figures(recloop: Recloop) -> dict[str, Any]:
    """The online ranking model's River figures (operators.model), JSON-ready."""
    figures = recloop.model.figures()
    updates_then, drifts_then = recloop.model_at_start
    return {
        **figures,
        # since the worker started: what Prometheus counters count
        "updates_here": figures["updates"] - updates_then,
        "drifts_here": figures["drifts"] - drifts_then,
    }


def all_figures(recloop: Recloop) -> dict[str, Any]:
    """Every figure of the worker (what the metrics topic carries)."""
    now = recloop.clock().timestamp()
    return {
        "worker": worker_figures(recloop),
        "model": model_figures(recloop),
        **recloop.live_metrics.figures(
            now, recloop.exporter.available_items(recloop.follower.catalog)
        ),
    }


def worker_id(recloop: Recloop) -> str:
    """How this worker names itself on the metrics topic: app id, host, web port, pid."""
    worker = recloop.settings.worker
    return f"{worker.app_id}@{socket.gethostname()}:{worker.web_port}/{os.getpid()}"


def metrics_record(recloop: Recloop, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """One record for the metrics topic: all figures, plus the CTR since ``previous``.

    Args:
        recloop: the worker.
        previous: the last record this worker published (``None`` for the first).

    """
    figures = all_figures(recloop)
    record: dict[str, Any] = {
        "schema_version": METRICS_RECORD_VERSION,
        "worker": worker_id(recloop),
        "at": recloop.clock().astimezone(UTC).isoformat(),
        "interval_s": recloop.settings.metrics.interval_s,
        "figures": figures,
    }
    if previous is not None:
        before = previous["figures"]
        clicks = sum(figures["recommended_clicks"].values()) - sum(
            before["recommended_clicks"].values()
        )
        shown = sum(figures["recommended_impressions"].values()) - sum(
            before["recommended_impressions"].values()
        )
        record["since_previous"] = {
            "from": previous["at"],
            "recommended_clicks": clicks,
            "recommended_impressions": shown,
            "ctr": clicks / shown if shown > 0 else None,
            "processed": figures["worker"]["processed"] - before["worker"]["processed"],
        }
    return record


def encode_record(record: Mapping[str, Any]) -> bytes:
    """A metrics record as compact JSON bytes."""
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    if value is not None:
        family.add_metric([], value)
    return family


def _labelled_gauge(
    name: str, doc: str, label: str, values: Mapping[str, float | None]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        if value is not None:
            family.add_metric([key], value)
    return family


def _counter(name: str, doc: str, label: str, values: Mapping[str, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def _total(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    # bucket bounds as Prometheus writes them ("0.005", "1.0", "+Inf")
    buckets = [
        ("+Inf" if math.isinf(bound) else repr(bound), float(n))
        for bound, n in histogram.cumulative()
    ]
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], buckets, histogram.total)
    return family


class LiveCollector(Collector):
    """Turns the worker's counters and live metrics into metric families at scrape time."""

    def __init__(self, recloop: Recloop) -> None:
        self._recloop = recloop

    def collect(self) -> Iterator[Metric]:
        """Every recloop metric (see ``docs/metrics.md``)."""
        recloop = self._recloop
        live = recloop.live_metrics
        worker = worker_figures(recloop)
        now = recloop.clock().timestamp()
        figures = live.figures(now, recloop.exporter.available_items(recloop.follower.catalog))
        yield _counter(
            "recloop_events",
            "Events read from the events topic, by outcome.",
            "outcome",
            {
                "processed": worker["processed"],
                "duplicate": worker["duplicates"],
                "dead_lettered": worker["dead_lettered"],
            },
        )
        yield _counter(
            "recloop_dead_letters",
            "Records sent to the dead-letter topic, by reason.",
            "reason",
            worker["dead_letter_reasons"],
        )
        yield _gauge(
            "recloop_dead_letter_rate",
            "Share of the events read that went to the dead-letter topic.",
            worker["dead_letter_rate"],
        )
        yield _total("recloop_item_updates", "Item states published.", worker["item_updates"])
        yield _total(
            "recloop_items_expired",
            "States of items without a catalog record deleted after the TTL.",
            worker["items_expired"],
        )
        yield _gauge(
            "recloop_consumer_lag",
            "Messages of the events topic this worker has not read yet.",
            worker["consumer_lag"],
        )
        yield _counter(
            "recloop_applied_events",
            "Applied (valid, new) events, by type.",
            "type",
            figures["events_by_type"],
        )
        for name, doc in (
            ("impressions", "Item slots of impression events."),
            ("recommended_impressions", "Impressed items that were in the user's latest list."),
            ("clicks", "Click events."),
            ("recommended_clicks", "Clicks on items in the user's latest list."),
            ("conversions", "Long dwells or ratings of 4+ on items in the user's latest list."),
        ):
            yield _counter(f"recloop_{name}", f"{doc} By user cohort.", "cohort", figures[name])
        yield _labelled_gauge(
            "recloop_ctr",
            "Recommended clicks / recommended impressions (cohort all, cold or warm).",
            "cohort",
            figures["ctr"],
        )
        yield _gauge(
            "recloop_conversion_rate",
            "Conversions / recommended impressions.",
            figures["conversion_rate"],
        )
        yield _total(
            "recloop_serendipitous_clicks",
            "Recommended clicks on a category new to the user.",
            live.serendipitous_clicks,
        )
        yield _gauge(
            "recloop_serendipity",
            "Share of recommended clicks on a category new to the user.",
            figures["serendipity"],
        )
        yield _total("recloop_lists", "Snapshots (lists) emitted.", live.lists)
        yield _gauge(
            "recloop_catalog_coverage",
            "Distinct items recommended within the coverage window / catalog items.",
            figures["catalog_coverage"],
        )
        yield _gauge(
            "recloop_recommended_items",
            "Distinct items recommended within the coverage window.",
            figures["recommended_items"],
        )
        yield _gauge(
            "recloop_catalog_items",
            "Available items in the worker's catalog.",
            figures["catalog_items"],
        )
        index = recloop.follower.catalog.index
        yield _gauge("recloop_index_items", "Live items in this worker's item index.", len(index))
        yield _gauge(
            "recloop_index_tombstones",
            "Removed items and replaced vectors the index graph holds until it is compacted.",
            index.tombstones,
        )
        yield _total(
            "recloop_index_writes",
            "Items (re-)indexed or removed from the index since the worker started.",
            recloop.follower.catalog.index_changes,
        )
        yield _total(
            "recloop_index_compactions",
            "Rebuilds of the index graph that cleared its tombstones.",
            index.compactions,
        )
        model = model_figures(recloop)
        yield _gauge(
            "recloop_model_roc_auc",
            f"The online ranking model's ROC AUC over its last {METRICS_WINDOW} examples.",
            model["roc_auc"],
        )
        yield _gauge(
            "recloop_model_log_loss",
            f"The online ranking model's log loss over its last {METRICS_WINDOW} examples.",
            model["log_loss"],
        )
        yield _total(
            "recloop_model_updates",
            "Likes the online ranking model learned from since the worker started.",
            model["updates_here"],
        )
        yield _total(
            "recloop_model_drifts",
            "Drifts ADWIN detected in the online ranking model's loss since the worker started.",
            model["drifts_here"],
        )
        yield _gauge(
            "recloop_model_likes_learned",
            "Likes the online ranking model learned from since it was new (its checkpoint's).",
            model["updates"],
        )
        yield _gauge(
            "recloop_list_diversity",
            "Mean intra-list diversity (pairs of differing categories) of recent lists.",
            figures["diversity"],
        )
        yield _gauge(
            "recloop_novelty_bits",
            "Mean self-information (-log2 popularity share) of recent lists' items.",
            figures["novelty_bits"],
        )
        yield _gauge(
            "recloop_filter_bubble",
            "Mean cosine of recent lists' items to the user's embedding.",
            figures["filter_bubble"],
        )
        yield from self._deescalation(live.adjustments, figures["deescalation"])
        yield _histogram(
            "recloop_event_to_snapshot_seconds",
            "Event message timestamp to snapshot handed to the producer.",
            live.latency,
        )
        yield _labelled_gauge(
            "recloop_event_to_snapshot_recent_seconds",
            "Percentiles of the recent event-to-snapshot latencies.",
            "quantile",
            {str(q): v for q, v in live.latency.quantiles(QUANTILES).items()},
        )
        yield _histogram(
            "recloop_deescalation_snapshot_seconds",
            "Dissatisfaction event timestamp to the adjusted snapshot handed to the producer.",
            live.deescalation_latency,
        )

    @staticmethod
    def _deescalation(
        adjustments: Mapping[tuple[str, str], int], figures: Mapping[str, Any]
    ) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "recloop_deescalation_adjustments",
            "Penalty changes made by de-escalation, by rule and reason.",
            labels=["rule", "reason"],
        )
        for (rule, reason), n in sorted(adjustments.items()):
            family.add_metric([rule, reason], n)
        yield family
        yield _total(
            "recloop_dissatisfactions",
            "not_relevant events (except seen_it) and completed skip streaks.",
            figures["dissatisfactions"],
        )
        yield _labelled_gauge(
            "recloop_deescalation_share_before",
            "Mean share of the penalised categories in the list before the event.",
            "rule",
            figures["share_before"],
        )
        yield _labelled_gauge(
            "recloop_deescalation_share_after",
            "Mean share of the penalised categories in the list the event produced.",
            "rule",
            figures["share_after"],
        )
        yield _counter(
            "recloop_deescalation_lists_measured",
            "Dissatisfactions whose lists before and after were measured.",
            "rule",
            figures["lists_measured"],
        )
        yield _counter(
            "recloop_deescalation_category_emptied",
            "Measured lists whose penalised categories vanished entirely.",
            "rule",
            figures["category_emptied"],
        )
        yield _total(
            "recloop_reengagements",
            "Dissatisfactions followed by a like within reengage_within events.",
            figures["reengaged"],
        )
        yield _gauge(
            "recloop_reengagement_rate",
            "Re-engagements / dissatisfactions.",
            figures["reengagement_rate"],
        )
        yield _gauge(
            "recloop_resolution_events",
            "Mean events from a dissatisfaction to the user's next like.",
            figures["mean_events_to_resolution"],
        )
        yield _gauge(
            "recloop_resolution_seconds",
            "Mean event-time seconds from a dissatisfaction to the user's next like.",
            figures["mean_seconds_to_resolution"],
        )


class MetricsExporter:
    """One app's Prometheus registry: the live collector and the HTTP counters.

    Args:
        recloop: the worker whose figures are exported.

    """

    def __init__(self, recloop: Recloop) -> None:
        self.available_items = AvailableItems()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(LiveCollector(recloop))
        self.http_requests = Counter(
            "recloop_http_requests",
            "HTTP requests served, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.metrics_errors = Counter(
            "recloop_metrics_errors",
            "Events whose metrics could not be counted (the event itself was processed).",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
