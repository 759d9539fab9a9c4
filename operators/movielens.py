"""MovieLens ratings as contract events and catalog records, for offline evaluation.

Two layouts are read:

* **100K** (``u.data``, ``u.item``, ``u.genre``): tab-separated ``user item rating unix-ts``;
  ``u.item`` is Latin-1, pipe-separated, its last columns the genre flags named by
  ``u.genre``, its third column the release date (``01-Jan-1995``; ``01-01-1995`` is
  accepted too).
* **later releases** (``ratings.csv``, ``movies.csv``): ``userId,movieId,rating,timestamp``
  with a header, half stars allowed (``3.5``); ``movies.csv`` is ``movieId,title,genres``
  with ``|``-separated genres and the year in the title.

Each rating becomes, at the rating's time (UTC), the implicit events a user with that
opinion would have sent, **followed by the explicit** ``rating`` **event itself** (so the
learner sees explicit feedback too; :class:`RatingMapping` can turn that off):

=============  =========================================================
rating         events, in this order
=============  =========================================================
4 to 5         ``click``, ``dwell`` (long: 120 s), ``rating``
3 to 3.5       ``click``, ``dwell`` (short: 12 s, between the 5 s and 30 s
               thresholds), ``rating``
2 to 2.5       ``skip``, ``rating``
below 2        ``not_relevant`` (reason ``not_interested``), ``rating``
=============  =========================================================

Users are ``u{id}``, items ``m{id}``; event ids are ``ml-{user}-{item}-{ts}-{type}``, so a
re-import produces the same ids. Events come out sorted by (timestamp, user id, item id,
event order above), ids compared as the numbers they are in the source files.

The MovieLens licence forbids redistribution: read the files where they are at run time,
never copy them (or lines of them) into the repository or its fixtures.

Example:
    >>> r = MovieLensRating(timestamp=881250949, user=196, item=242, value=4.0)
    >>> [e.type for e in rating_events(r, RatingMapping())]
    ['click', 'dwell', 'rating']
    >>> rating_events(r, RatingMapping())[0].event_id
    'ml-196-242-881250949-click'

"""

from __future__ import annotations

import csv
import re
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

import numpy as np

from operators.files import write_atomic
from schemas.catalog import ItemRecord, item_to_json
from schemas.events import Click, Dwell, ItemEvent, NotRelevant, Rating, Skip, event_to_json

#: Event types in the order a rating's events are emitted (and sorted).
EVENT_ORDER: tuple[str, ...] = ("click", "dwell", "skip", "not_relevant", "rating")
#: ``created_at`` when the release date is missing or unreadable.
UNKNOWN_DATE = datetime(1970, 1, 1, tzinfo=UTC)
#: Category (and the lone genre) of a movie without any genre.
UNKNOWN_CATEGORY = "unknown"

MovieLensLayout = Literal["100k", "csv"]

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_TITLE_YEAR = re.compile(r"\((\d{4})(?:-\d{0,4})?\)\s*$")
_MAX_TITLE = 256
_MAX_TAGS = 32


class MovieLensFormatError(ValueError):
    """A MovieLens file that does not have the expected layout, with the file and line."""


@dataclass(frozen=True)
class RatingMapping:
    """How one star rating turns into events.

    Attributes:
        long_dwell_ms: dwell sent for a liked movie (at or above ``liked_from``).
        short_dwell_ms: dwell sent for a lukewarm one; between the default short (5 s) and
            long (30 s) dwell thresholds, so it reads as a mild positive.
        liked_from: from this rating up, ``click`` plus a long ``dwell``.
        opened_from: from this rating up (below ``liked_from``), ``click`` plus a short one.
        skipped_from: from this rating up (below ``opened_from``), a ``skip``; below it,
            ``not_relevant`` with reason ``not_interested``.
        emit_rating: also send the explicit ``rating`` event (value = the stars).

    """

    long_dwell_ms: float = 120_000.0
    short_dwell_ms: float = 12_000.0
    liked_from: float = 4.0
    opened_from: float = 3.0
    skipped_from: float = 2.0
    emit_rating: bool = True


@dataclass(frozen=True, order=True)
class MovieLensRating:
    """One rating as the source file has it (ids are MovieLens' integers)."""

    timestamp: int
    user: int
    item: int
    value: float


@dataclass(frozen=True)
class ImportCounts:
    """What an import wrote."""

    ratings: int
    events: int
    users: int
    items: int
    items_missing_from_catalog: int
    events_by_type: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """The counts as a JSON-ready dict."""
        return {
            "ratings": self.ratings,
            "events": self.events,
            "users": self.users,
            "items": self.items,
            "items_missing_from_catalog": self.items_missing_from_catalog,
            "events_by_type": dict(self.events_by_type),
        }


def user_id_of(user: int) -> str:
    """The contract user id of a MovieLens user (``u{id}``)."""
    return f"u{user}"


def item_id_of(item: int) -> str:
    """The contract item id of a MovieLens movie (``m{id}``)."""
    return f"m{item}"


def detect_layout(directory: Path) -> MovieLensLayout:
    """Which MovieLens release ``directory`` holds.

    Raises:
        FileNotFoundError: neither ``u.data`` nor ``ratings.csv`` is there.

    """
    if (directory / "u.data").is_file():
        return "100k"
    if (directory / "ratings.csv").is_file():
        return "csv"
    raise FileNotFoundError(
        f"{directory} holds no MovieLens ratings (looked for u.data and ratings.csv)"
    )


def _int(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise MovieLensFormatError(f"{where}: expected an integer id, got {text!r}") from None


def _stars(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MovieLensFormatError(f"{where}: expected a rating, got {text!r}") from None
    if not 0.0 <= value <= 5.0:
        raise MovieLensFormatError(f"{where}: rating {value} is outside 0..5")
    return value


def read_ratings(directory: Path) -> Iterator[MovieLensRating]:
    """Every rating of the release in ``directory``, in file order, one at a time.

    Raises:
        MovieLensFormatError: a line without the expected fields, naming file and line.

    """
    if detect_layout(directory) == "100k":
        path = directory / "u.data"
        with path.open(encoding="latin-1") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                parts = line.split()
                if len(parts) != 4:
                    raise MovieLensFormatError(f"{where}: expected 4 fields, got {len(parts)}")
                yield MovieLensRating(
                    timestamp=_int(parts[3], where), user=_int(parts[0], where),
                    item=_int(parts[1], where), value=_stars(parts[2], where),
                )  # fmt: skip
        return
    path = directory / "ratings.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:4]] != [
            "userId", "movieId", "rating", "timestamp",
        ]:  # fmt: skip
            raise MovieLensFormatError(
                f"{path}:1: expected the header userId,movieId,rating,timestamp, got {header}"
            )
        for row in reader:
            if not row:
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) < 4:
                raise MovieLensFormatError(f"{where}: expected 4 fields, got {len(row)}")
            yield MovieLensRating(
                timestamp=_int(row[3], where), user=_int(row[0], where),
                item=_int(row[1], where), value=_stars(row[2], where),
            )  # fmt: skip


def sort_ratings(ratings: Iterable[MovieLensRating]) -> Iterator[MovieLensRating]:
    """The ratings in event order: by timestamp, then user id, then item id.

    The ratings are held once, in compact arrays (32 bytes a rating), and handed out one
    at a time; ties keep their input order.
    """
    stamps, users, items = array("q"), array("q"), array("q")
    values = array("d")
    for rating in ratings:
        stamps.append(rating.timestamp)
        users.append(rating.user)
        items.append(rating.item)
        values.append(rating.value)
    ts_a, user_a, item_a = (np.frombuffer(a, dtype=np.int64) for a in (stamps, users, items))
    value_a = np.frombuffer(values, dtype=np.float64)
    order = np.lexsort((item_a, user_a, ts_a))  # the last key sorts first
    for index in order.tolist():
        yield MovieLensRating(
            timestamp=int(ts_a[index]), user=int(user_a[index]), item=int(item_a[index]),
            value=float(value_a[index]),
        )  # fmt: skip


def rating_events(rating: MovieLensRating, mapping: RatingMapping) -> list[ItemEvent]:
    """The events one rating stands for, in :data:`EVENT_ORDER` (see the module docs).

    Example:
        >>> r = MovieLensRating(timestamp=0, user=1, item=2, value=1.0)
        >>> [(e.type, getattr(e, "reason", None)) for e in rating_events(r, RatingMapping())]
        [('not_relevant', 'not_interested'), ('rating', None)]

    """
    when = datetime.fromtimestamp(rating.timestamp, tz=UTC)
    user, item = user_id_of(rating.user), item_id_of(rating.item)
    stem = f"ml-{rating.user}-{rating.item}-{rating.timestamp}"

    def common(kind: str) -> dict[str, object]:
        return {"event_id": f"{stem}-{kind}", "user_id": user, "item_id": item,
                "timestamp": when}  # fmt: skip

    events: list[ItemEvent] = []
    value = rating.value
    if value >= mapping.opened_from:
        dwell = mapping.long_dwell_ms if value >= mapping.liked_from else mapping.short_dwell_ms
        events.append(Click.model_validate({"type": "click", **common("click")}))
        events.append(Dwell.model_validate({"type": "dwell", "dwell_ms": dwell, **common("dwell")}))
    elif value >= mapping.skipped_from:
        events.append(Skip.model_validate({"type": "skip", **common("skip")}))
    else:
        events.append(
            NotRelevant.model_validate(
                {"type": "not_relevant", "reason": "not_interested", **common("not_relevant")}
            )
        )
    if mapping.emit_rating:
        events.append(Rating.model_validate({"type": "rating", "value": value,
                                             **common("rating")}))  # fmt: skip
    return events


def movielens_events(
    ratings: Iterable[MovieLensRating], mapping: RatingMapping
) -> Iterator[ItemEvent]:
    """Every rating's events, in the order of ``ratings`` (sort them first)."""
    for rating in ratings:
        yield from rating_events(rating, mapping)


def _release_date(text: str) -> datetime:
    """``01-Jan-1995`` or ``01-01-1995``; :data:`UNKNOWN_DATE` when neither."""
    parts = text.strip().split("-")
    if len(parts) != 3:
        return UNKNOWN_DATE
    day, month, year = parts
    month_number = _MONTHS.get(month.lower()[:3]) if not month.isdigit() else int(month)
    try:
        return datetime(int(year), month_number or 0, int(day), tzinfo=UTC)
    except ValueError:
        return UNKNOWN_DATE


def _title_year(title: str) -> datetime:
    match = _TITLE_YEAR.search(title)
    if match is None:
        return UNKNOWN_DATE
    try:
        return datetime(int(match.group(1)), 1, 1, tzinfo=UTC)
    except ValueError:
        return UNKNOWN_DATE


def _clean(text: str) -> str:
    r"""Printable text within the contract's bounds (control characters become spaces).

    The C1 controls (``\x80``-``\x9f``) too, which the contract's text fields refuse as
    it does C0: a Windows-1252 byte in the Latin-1 ``u.item`` (``Caf\x92 Society``) reads
    as one, and would otherwise abort the whole import.
    """
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", text).strip()[:_MAX_TITLE]


def movie_record(
    item: int, title: str | None, genres: list[str], created_at: datetime
) -> ItemRecord:
    """The catalog record of one movie: category is its first genre, tags all of them."""
    tags = [_clean(g)[:64] for g in genres if _clean(g)][:_MAX_TAGS]
    return ItemRecord(
        item_id=item_id_of(item),
        category=tags[0] if tags else UNKNOWN_CATEGORY,
        tags=tags,
        title=(_clean(title) or None) if title is not None else None,
        created_at=created_at,
    )


def read_genres(directory: Path) -> list[str]:
    """The 100K genre names in flag order, from ``u.genre`` (``name|index`` lines)."""
    path = directory / "u.genre"
    named: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        name, _, index = line.rpartition("|")
        if not name:
            raise MovieLensFormatError(f"{path}:{number}: expected name|index, got {line!r}")
        named[_int(index, f"{path}:{number}")] = name
    if sorted(named) != list(range(len(named))):
        raise MovieLensFormatError(f"{path}: genre indexes are not 0..{len(named) - 1}")
    return [named[i] for i in range(len(named))]


def read_items(directory: Path) -> Iterator[ItemRecord]:
    """Every movie of the catalog file in ``directory`` (``u.item`` or ``movies.csv``).

    Raises:
        MovieLensFormatError: a line without the expected fields, naming file and line.

    """
    if detect_layout(directory) == "100k":
        genres = read_genres(directory)
        path = directory / "u.item"
        with path.open(encoding="latin-1", newline="") as handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("|")
                # id | title | release | video release | url | flags..., and a title may
                # itself hold a pipe, so read from both ends.
                if len(fields) < 5 + len(genres):
                    raise MovieLensFormatError(
                        f"{path}:{number}: expected {5 + len(genres)} fields, got {len(fields)}"
                    )
                flags, head = fields[-len(genres) :], fields[: -len(genres)]
                title = "|".join(head[1:-3])
                chosen = [g for g, flag in zip(genres, flags, strict=True) if flag.strip() == "1"]
                released = _release_date(head[-3])
                if released == UNKNOWN_DATE:  # no readable date: the title's year, if any
                    released = _title_year(title)
                yield movie_record(_int(head[0], f"{path}:{number}"), title, chosen, released)
        return
    path = directory / "movies.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for row in reader:
            if not row:
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) < 3:
                raise MovieLensFormatError(f"{where}: expected 3 fields, got {len(row)}")
            genres = [g for g in row[2].split("|") if g and g != "(no genres listed)"]
            yield movie_record(_int(row[0], where), row[1], genres, _title_year(row[1]))


def _write_lines(path: Path, lines: Iterable[bytes]) -> int:
    """Write ``lines`` (one JSON document each) to ``path`` atomically; returns the count."""
    count = 0

    def write(handle: IO[bytes]) -> None:
        nonlocal count
        for line in lines:
            handle.write(line)
            handle.write(b"\n")
            count += 1

    write_atomic(path, write)
    return count


def import_movielens(
    directory: Path, out_dir: Path, mapping: RatingMapping | None = None
) -> ImportCounts:
    """Write ``events.jsonl`` and ``items.jsonl`` for the MovieLens release in ``directory``.

    Movies rated but missing from the catalog file get a placeholder record (category
    ``unknown``), so every event names a known item; their number is reported.

    Args:
        directory: a MovieLens folder (100K or a ``ratings.csv`` release).
        out_dir: where the two files go (created; each written atomically).
        mapping: how ratings become events (:class:`RatingMapping` by default).

    """
    mapping = mapping or RatingMapping()
    users: set[int] = set()
    rated: set[int] = set()
    ratings = 0

    def counted() -> Iterator[MovieLensRating]:
        nonlocal ratings
        for rating in read_ratings(directory):
            ratings += 1
            users.add(rating.user)
            rated.add(rating.item)
            yield rating

    by_type = dict.fromkeys(EVENT_ORDER, 0)

    def encoded() -> Iterator[bytes]:
        for event in movielens_events(sort_ratings(counted()), mapping):
            by_type[event.type] += 1
            yield event_to_json(event)

    events = _write_lines(out_dir / "events.jsonl", encoded())
    listed: set[int] = set()

    def catalog() -> Iterator[bytes]:
        for record in read_items(directory):
            listed.add(int(record.item_id[1:]))
            yield item_to_json(record)
        for item in sorted(rated - listed):
            yield item_to_json(movie_record(item, None, [], UNKNOWN_DATE))

    items = _write_lines(out_dir / "items.jsonl", catalog())
    return ImportCounts(
        ratings=ratings, events=events, users=len(users), items=items,
        items_missing_from_catalog=len(rated - listed),
        events_by_type={k: v for k, v in by_type.items() if v},
    )  # fmt: skip
