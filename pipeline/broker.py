"""Which broker to use: the configured one, or the embedded one started on demand."""

from __future__ import annotations

from pipeline.embedded_kafka import EmbeddedKafka, default_cache_dir
from pipeline.settings import Settings


def embedded_broker(settings: Settings) -> EmbeddedKafka:
    """The embedded broker manager, with its cache where the settings say."""
    return EmbeddedKafka(settings.cache_dir or default_cache_dir())


def resolve_bootstrap(settings: Settings) -> Settings:
    """Settings with ``kafka.bootstrap_servers`` set, starting the embedded broker if unset."""
    if settings.kafka.bootstrap_servers:
        return settings
    info = embedded_broker(settings).start()
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": info.bootstrap_servers})
    return settings.model_copy(update={"kafka": kafka})
