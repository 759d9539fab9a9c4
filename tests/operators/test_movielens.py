"""The MovieLens import: rating -> events mapping, ordering, both file layouts.

Every file here is written by the test itself (made-up users, movies and titles): the
MovieLens licence forbids copying its data into the repository. The real 100K release
is only read, in place, by the ``dataset`` test.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from operators.movielens import (
    EVENT_ORDER,
    MovieLensFormatError,
    MovieLensRating,
    RatingMapping,
    import_movielens,
    rating_events,
    read_items,
    read_ratings,
    sort_ratings,
)
from operators.signals import SignalRules, signal_of
from schemas.catalog import parse_item
from schemas.events import Dwell, Impression, NotRelevant, Rating, parse_event

GENRES = ("unknown", "Action", "Comedy", "Drama")


def write_100k(directory: Path, ratings: list[tuple[int, int, int, int]],
               items: list[str]) -> Path:  # fmt: skip
    """A made-up release in the 100K layout; ``items`` are u.item lines (str, Latin-1)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "u.data").write_text(
        "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings), encoding="latin-1"
    )
    (directory / "u.genre").write_text(
        "".join(f"{g}|{n}\n" for n, g in enumerate(GENRES)) + "\n", encoding="latin-1"
    )
    (directory / "u.item").write_bytes("".join(f"{line}\n" for line in items).encode("latin-1"))
    return directory


def item_line(item: int, title: str, date: str, flags: str) -> str:
    """One u.item line: id|title|release|video release|url|flags (one per genre)."""
    return "|".join([str(item), title, date, "", "http://example.invalid/", *flags])


def write_csv_release(directory: Path, ratings: str, movies: str) -> Path:
    """A made-up release in the ratings.csv / movies.csv layout."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ratings.csv").write_text(ratings, encoding="utf-8")
    (directory / "movies.csv").write_text(movies, encoding="utf-8")
    return directory


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- the mapping -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stars", "types", "dwell_ms"),
    [
        (5.0, ["click", "dwell", "rating"], 120_000.0),
        (4.5, ["click", "dwell", "rating"], 120_000.0),
        (4.0, ["click", "dwell", "rating"], 120_000.0),
        (3.5, ["click", "dwell", "rating"], 12_000.0),
        (3.0, ["click", "dwell", "rating"], 12_000.0),
        (2.5, ["skip", "rating"], None),
        (2.0, ["skip", "rating"], None),
        (1.5, ["not_relevant", "rating"], None),
        (1.0, ["not_relevant", "rating"], None),
        (0.5, ["not_relevant", "rating"], None),
    ],
)
def test_each_rating_becomes_implicit_events_then_the_rating(
    stars: float, types: list[str], dwell_ms: float | None
) -> None:
    rating = MovieLensRating(timestamp=900_000_000, user=7, item=42, value=stars)
    events = rating_events(rating, RatingMapping())
    assert [e.type for e in events] == types
    dwell = [e for e in events if isinstance(e, Dwell)]
    assert [d.dwell_ms for d in dwell] == ([dwell_ms] if dwell_ms is not None else [])
    explicit = events[-1]
    assert isinstance(explicit, Rating)
    assert explicit.value == stars
    for event in events:
        assert event.user_id == "u7"
        assert event.item_id == "m42"
        assert event.timestamp == datetime.fromtimestamp(900_000_000, tz=UTC)
        assert event.timestamp.utcoffset() is not None
        assert event.event_id == f"ml-7-42-900000000-{event.type}"
    blocked = [e for e in events if isinstance(e, NotRelevant)]
    assert all(e.reason == "not_interested" for e in blocked)


def test_the_dwells_read_as_liked_and_lukewarm_under_the_default_signal_rules() -> None:
    rules = SignalRules()

    def dwell_target(stars: float) -> float:
        events = rating_events(MovieLensRating(0, 1, 1, stars), RatingMapping())
        dwell = next(e for e in events if isinstance(e, Dwell))
        signal = signal_of(dwell, expected_ms=None, rules=rules)
        assert signal is not None
        return signal.target

    assert rules.dwell_short_ms < RatingMapping().short_dwell_ms < rules.dwell_long_ms
    assert dwell_target(4) == 1.0  # a liked movie: a full positive
    assert 0 < dwell_target(3) < 1.0  # a lukewarm one: a mild positive


def test_the_rating_event_can_be_left_out() -> None:
    events = rating_events(MovieLensRating(0, 1, 1, 5.0), RatingMapping(emit_rating=False))
    assert [e.type for e in events] == ["click", "dwell"]


# -- the 100K layout -------------------------------------------------------------------


def test_100k_events_are_sorted_by_time_user_item_and_event_order(tmp_path: Path) -> None:
    # same second for users 10 and 2 (numeric order puts 2 first, text order would not),
    # and two items of one user at the same second
    ratings = [(10, 3, 5, 2000), (2, 9, 1, 2000), (2, 3, 3, 2000), (1, 1, 4, 1000),
               (2, 10, 2, 3000)]  # fmt: skip
    items = [item_line(n, f"Movie {n} (1995)", "01-Jan-1995", "0100") for n in (1, 3, 9, 10)]
    source = write_100k(tmp_path / "ml", ratings, items)
    counts = import_movielens(source, tmp_path / "out")
    events = read_jsonl(tmp_path / "out" / "events.jsonl")
    keys = [(e["user_id"], e["item_id"], e["type"]) for e in events]
    assert keys == [
        ("u1", "m1", "click"), ("u1", "m1", "dwell"), ("u1", "m1", "rating"),
        ("u2", "m3", "click"), ("u2", "m3", "dwell"), ("u2", "m3", "rating"),
        ("u2", "m9", "not_relevant"), ("u2", "m9", "rating"),
        ("u10", "m3", "click"), ("u10", "m3", "dwell"), ("u10", "m3", "rating"),
        ("u2", "m10", "skip"), ("u2", "m10", "rating"),
    ]  # fmt: skip
    stamps = [parse_event(json.dumps(e)).timestamp for e in events]
    assert stamps == sorted(stamps)
    assert counts.ratings == 5
    assert counts.users == 3
    assert counts.events == len(events) == 13
    assert counts.events_by_type == {"click": 3, "dwell": 3, "skip": 1, "not_relevant": 1,
                                     "rating": 5}  # fmt: skip


def test_100k_catalog_reads_latin1_genres_and_release_dates(tmp_path: Path) -> None:
    items = [
        item_line(1, "Misérables, Les (1995)", "01-Jan-1995", "0011"),  # é is one Latin-1 byte
        item_line(2, "Numbered Month (1997)", "15-08-1997", "0001"),
        item_line(3, "No Genre", "", "0000"),
        item_line(4, "Pipe | In Title (1994)", "not a date", "1000"),
    ]
    source = write_100k(tmp_path / "ml", [(1, 1, 4, 1)], items)
    assert b"Mis\xe9rables" in (source / "u.item").read_bytes()
    records = {r.item_id: r for r in read_items(source)}
    assert records["m1"].title == "Misérables, Les (1995)"
    assert records["m1"].category == "Comedy"
    assert records["m1"].tags == ["Comedy", "Drama"]
    assert records["m1"].created_at == datetime(1995, 1, 1, tzinfo=UTC)
    assert records["m2"].created_at == datetime(1997, 8, 15, tzinfo=UTC)
    assert records["m3"].category == "unknown"
    assert records["m3"].tags == []
    assert records["m3"].created_at == datetime(1970, 1, 1, tzinfo=UTC)
    assert records["m4"].title == "Pipe | In Title (1994)"
    assert records["m4"].category == "unknown"  # the genre named "unknown" in u.genre
    # no readable release date: January 1st of the title's year, as for the later releases
    assert records["m4"].created_at == datetime(1994, 1, 1, tzinfo=UTC)


def test_a_windows_1252_byte_in_a_100k_title_is_imported_as_a_space(tmp_path: Path) -> None:
    # \x92 is Windows-1252's apostrophe; read as Latin-1 it is a C1 control, which the
    # contract refuses in a title as it does \x00-\x1f
    items = [item_line(1, "Caf\x92 Society (1995)", "01-Jan-1995", "0010")]
    source = write_100k(tmp_path / "ml", [(1, 1, 4, 1)], items)
    assert b"Caf\x92 Society" in (source / "u.item").read_bytes()

    counts = import_movielens(source, tmp_path / "out")

    records = [parse_item(line) for line in (tmp_path / "out" / "items.jsonl").read_bytes()
               .splitlines()]  # fmt: skip
    assert counts.items == 1
    assert [(r.item_id, r.title, r.category) for r in records] == [
        ("m1", "Caf  Society (1995)", "Comedy")
    ]


def test_written_files_follow_the_contract_and_rated_items_missing_from_the_catalog_get_a_record(
    tmp_path: Path,
) -> None:
    items = [item_line(1, "Listed (1990)", "01-Feb-1990", "0100")]
    source = write_100k(tmp_path / "ml", [(1, 1, 5, 10), (1, 2, 3, 20)], items)
    counts = import_movielens(source, tmp_path / "out")
    out = tmp_path / "out"
    events = [parse_event(line) for line in (out / "events.jsonl").read_bytes().splitlines()]
    records = [parse_item(line) for line in (out / "items.jsonl").read_bytes().splitlines()]
    assert {e.item_id for e in events if not isinstance(e, Impression)} == {"m1", "m2"}
    assert [r.item_id for r in records] == ["m1", "m2"]
    assert records[1].category == "unknown"
    assert counts.items == 2
    assert counts.items_missing_from_catalog == 1
    assert not list(out.glob(".*"))  # no temporary file left behind


def test_a_malformed_line_is_reported_with_its_file_and_line(tmp_path: Path) -> None:
    source = write_100k(tmp_path / "ml", [(1, 1, 4, 1)], [])
    with (source / "u.data").open("a", encoding="latin-1") as handle:
        handle.write("1\tnot-an-id\t4\t2\n")
    with pytest.raises(MovieLensFormatError, match=r"u\.data:2: expected an integer id"):
        list(read_ratings(source))


def test_a_folder_without_ratings_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"u\.data and ratings\.csv"):
        import_movielens(tmp_path, tmp_path / "out")


# -- the ratings.csv layout ------------------------------------------------------------


def test_csv_release_with_half_stars_quoted_titles_and_listed_genres(tmp_path: Path) -> None:
    source = write_csv_release(
        tmp_path / "ml",
        "userId,movieId,rating,timestamp\n"
        "3,20,3.5,1500000100\n"
        "3,10,4.5,1500000000\n"
        "1,20,0.5,1500000000\n",
        "movieId,title,genres\n"
        '10,"Comma, The (2001)",Drama|Thriller\n'
        "20,Untitled Year,(no genres listed)\n",
    )
    import_movielens(source, tmp_path / "out")
    events = [parse_event(line) for line in (tmp_path / "out" / "events.jsonl").read_bytes()
              .splitlines()]  # fmt: skip
    assert [(e.user_id, e.type) for e in events] == [
        ("u1", "not_relevant"), ("u1", "rating"),
        ("u3", "click"), ("u3", "dwell"), ("u3", "rating"),
        ("u3", "click"), ("u3", "dwell"), ("u3", "rating"),
    ]  # fmt: skip
    ratings = [e for e in events if isinstance(e, Rating)]
    assert [r.value for r in ratings] == [0.5, 4.5, 3.5]
    dwells = [e for e in events if isinstance(e, Dwell)]
    assert [d.dwell_ms for d in dwells] == [120_000.0, 12_000.0]
    records = {r.item_id: r for r in read_items(source)}
    assert records["m10"].title == "Comma, The (2001)"
    assert records["m10"].category == "Drama"
    assert records["m10"].tags == ["Drama", "Thriller"]
    assert records["m10"].created_at == datetime(2001, 1, 1, tzinfo=UTC)
    assert records["m20"].category == "unknown"
    assert records["m20"].created_at == datetime(1970, 1, 1, tzinfo=UTC)


def test_csv_release_needs_its_header(tmp_path: Path) -> None:
    source = write_csv_release(tmp_path / "ml", "1,2,3.0,4\n", "movieId,title,genres\n")
    with pytest.raises(MovieLensFormatError, match="header"):
        list(read_ratings(source))


def test_sorting_keeps_ties_in_input_order_and_orders_ids_as_numbers() -> None:
    ratings = [MovieLensRating(5, 10, 1, 4.0), MovieLensRating(5, 9, 1, 4.0),
               MovieLensRating(1, 10, 2, 4.0)]  # fmt: skip
    assert [(r.timestamp, r.user) for r in sort_ratings(ratings)] == [(1, 10), (5, 9), (5, 10)]
    assert EVENT_ORDER == ("click", "dwell", "skip", "not_relevant", "rating")


# -- the real MovieLens 100K (read in place, never copied) -----------------------------


@pytest.mark.dataset
def test_imports_the_real_movielens_100k(movielens_dir: Path, tmp_path: Path) -> None:
    counts = import_movielens(movielens_dir, tmp_path / "ml-100k")
    assert counts.ratings == 100_000
    assert counts.users == 943
    assert counts.items == 1682
    assert counts.events_by_type["rating"] == 100_000
    assert counts.events == sum(counts.events_by_type.values())
    previous = None
    with (tmp_path / "ml-100k" / "events.jsonl").open("rb") as handle:
        for line in handle:
            event = parse_event(line)
            if previous is not None:
                assert event.timestamp >= previous
            previous = event.timestamp
    items = [parse_item(line) for line in (tmp_path / "ml-100k" / "items.jsonl").read_bytes()
             .splitlines()]  # fmt: skip
    assert len({i.item_id for i in items}) == 1682
