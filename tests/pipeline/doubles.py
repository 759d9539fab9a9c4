"""Test doubles for the pipeline tier: where the agents' output goes, and a fixed catalog."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from operators.catalog import Catalog


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


@dataclass
class RecordingEmitter:
    sent: list[Sent] = field(default_factory=list)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        self.sent.append(Sent(topic, key, value, dict(headers)))

    def to(self, suffix: str) -> list[Sent]:
        return [s for s in self.sent if s.topic.endswith(suffix)]


class FixedCatalog:
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def start(self) -> None:
        pass

    async def wait_caught_up(self, timeout_s: float = 60.0) -> bool:
        return True

    def drain(self) -> int:
        return 0

    def stop(self) -> None:
        pass
