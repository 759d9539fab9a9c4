"""ItemIndex: incremental upserts and removals, resizing, exclusions, persistence, threads."""

from __future__ import annotations

import itertools
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import operators.index
from operators.index import IndexLoadError, ItemIndex, _normalised, _normalised_rows

DIM = 16
Matrix = npt.NDArray[np.float64]


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> Matrix:
    vectors = rng.standard_normal((n, dim))
    unit: Matrix = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


def _ids(n: int, prefix: str = "item") -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def _exact(
    live: dict[str, Matrix], query: Matrix, k: int, exclude: set[str] | None = None
) -> list[str]:
    """The exact top ``k`` live ids by cosine similarity (the reference)."""
    candidates = [item for item in live if item not in (exclude or set())]
    if not candidates:
        return []
    matrix = np.stack([live[item] for item in candidates])
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    scores = matrix @ (query / np.linalg.norm(query))
    return [candidates[i] for i in np.argsort(-scores, kind="stable")[:k]]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261122)


@pytest.fixture
def small(rng: np.random.Generator) -> tuple[ItemIndex, dict[str, Matrix]]:
    """200 items, with a search wide enough (ef 400) for results to equal exact search."""
    vectors = _unit(rng, 200)
    live = dict(zip(_ids(200), vectors, strict=True))
    index = ItemIndex.build(DIM, live.items(), ef_search=400, seed=3)
    return index, live


# -- adding, updating, removing ---------------------------------------------------------


def test_added_items_are_found_with_their_cosine_similarity(rng: np.random.Generator) -> None:
    index = ItemIndex(DIM, seed=1)
    vectors = _unit(rng, 50)
    index.upsert_many(_ids(50), vectors * 7.5)  # scale does not matter: cosine
    assert len(index) == 50
    assert "item-00007" in index
    assert "item-99999" not in index
    best, score = index.query(vectors[7], k=1)[0]
    assert best == "item-00007"
    assert score == pytest.approx(1.0, abs=1e-5)
    stored = index.vector("item-00007")
    assert stored is not None
    np.testing.assert_allclose(stored, vectors[7], atol=1e-6)
    assert index.vector("item-99999") is None


def test_results_match_exact_search_on_a_small_index(
    small: tuple[ItemIndex, dict[str, Matrix]], rng: np.random.Generator
) -> None:
    index, live = small
    for query in _unit(rng, 20):
        result = index.query(query, k=10)
        assert [item for item, _ in result] == _exact(live, query, 10)
        scores = [score for _, score in result]
        assert scores == sorted(scores, reverse=True)


def test_recall_measures_the_graph_against_exact_search_over_its_vectors(
    rng: np.random.Generator,
) -> None:
    vectors, queries = _unit(rng, 3000), _unit(rng, 40)
    good = ItemIndex.build(DIM, list(zip(_ids(300), vectors[:300], strict=True)))
    poor = ItemIndex.build(DIM, list(zip(_ids(3000), vectors, strict=True)),
                           m=2, ef_construction=4, ef_search=1)  # fmt: skip

    assert good.recall(queries, 10) == 1.0
    poor_recall = poor.recall(queries, 10)
    assert poor_recall is not None and 0.0 < poor_recall < 0.9
    assert ItemIndex(DIM).recall(queries, 10) is None and good.recall([], 10) is None


def test_update_replaces_the_vector_and_queries_follow(
    small: tuple[ItemIndex, dict[str, Matrix]],
) -> None:
    index, _ = small
    old = index.vector("item-00042")
    assert old is not None
    new = -old
    index.upsert("item-00042", new)
    assert len(index) == 200
    assert index.query(new, k=1)[0][0] == "item-00042"
    assert "item-00042" not in [item for item, _ in index.query(old, k=20)]
    stored = index.vector("item-00042")
    assert stored is not None
    np.testing.assert_allclose(stored, new, atol=1e-6)


def test_removed_items_are_never_returned_and_come_back_when_re_added(
    small: tuple[ItemIndex, dict[str, Matrix]], rng: np.random.Generator
) -> None:
    index, live = small
    gone = _ids(200)[::3]
    for item in gone:
        assert index.remove(item)
    assert not index.remove(gone[0])  # already removed
    assert not index.remove("never-added")
    assert len(index) == 200 - len(gone)
    assert gone[0] not in index
    assert index.vector(gone[0]) is None
    assert index.neighbours(gone[0], k=5) == []
    for item in gone:
        assert item not in {found for found, _ in index.query(live[item], k=50)}
    still = {item: vector for item, vector in live.items() if item not in set(gone)}
    for query in _unit(rng, 10):
        assert [item for item, _ in index.query(query, k=10)] == _exact(still, query, 10)

    index.upsert(gone[0], live[gone[0]])
    assert gone[0] in index
    assert index.query(live[gone[0]], k=1)[0][0] == gone[0]
    assert index.ids()[-1] == gone[0]  # listed in the order of the last upsert


def test_updates_and_removals_leave_tombstones_that_compaction_clears(
    rng: np.random.Generator,
) -> None:
    index = ItemIndex(DIM, max_elements=256, seed=2)
    vectors = dict(zip(_ids(200), _unit(rng, 200), strict=True))
    index.upsert_many(list(vectors), np.vstack(list(vectors.values())))
    moved = _ids(200)[:100]  # 100 tombstones: not more than half the live items
    for item in moved:
        vectors[item] = _unit(rng, 1)[0]
        index.upsert(item, vectors[item])
    assert index.compactions == 0
    assert index.tombstones == 100
    assert index.capacity == 512  # each new vector took a new slot
    index.upsert("item-00199", vectors["item-00199"])  # the 101st: compacted
    assert index.compactions == 1
    assert index.tombstones == 0
    assert len(index) == 200
    assert len(index.ids()) == 200
    assert index.ids()[-1] == "item-00199"  # the order of the last upserts survives
    for query in _unit(rng, 10):
        assert [item for item, _ in index.query(query, k=10)] == _exact(vectors, query, 10)
    for item in _ids(200)[:101]:  # the 67th removal of 200 items compacts again
        assert index.remove(item)
        del vectors[item]
    assert index.compactions == 2
    assert len(index) == 99
    assert index.vector("item-00000") is None
    index.upsert("item-00000", _unit(rng, 1)[0])  # a removed item comes back
    assert "item-00000" in index
    for query in _unit(rng, 5):
        found = [item for item, _ in index.query(query, k=10)]
        assert "item-00001" not in found
    restored = ItemIndex.restore(index.snapshot())
    assert restored.ids() == index.ids()
    assert restored.query(vectors["item-00150"], k=5) == index.query(vectors["item-00150"], k=5)


def test_a_large_compaction_runs_a_step_per_write_and_misses_no_write(
    rng: np.random.Generator,
) -> None:
    """Writes during a compaction reach the replacement graph, whatever step it is at."""
    index = ItemIndex(DIM, max_elements=1024, seed=3)
    vectors = dict(zip(_ids(600), _unit(rng, 600), strict=True))
    index.upsert_many(list(vectors), np.vstack(list(vectors.values())))
    for item in _ids(600)[:301]:  # the 301st tombstone starts a compaction: 600 to copy
        vectors[item] = _unit(rng, 1)[0]
        index.upsert(item, vectors[item])
    assert index.compactions == 0  # one step of 256 copied: not done
    # the plan runs items 301..599 then 0..300; step 1 copied 301..556
    moved = ["item-00301", "item-00299", "brand-new"]  # copied, not reached yet, new
    for item in moved:
        vectors[item] = _unit(rng, 1)[0]
    index.upsert_many(moved, np.vstack([vectors[item] for item in moved]))
    assert index.compactions == 0  # step 2 copied 557..599 and 0..212
    assert index.remove("item-00298")  # not reached yet: step 3 skips it
    del vectors["item-00298"]
    assert index.compactions == 1  # step 3 copied the rest and took over
    assert index.tombstones == 1  # item-00301's first copy
    assert set(index.ids()) == set(vectors)
    assert len(index) == 600
    for item in moved:
        stored = index.vector(item)
        assert stored is not None
        np.testing.assert_allclose(stored, vectors[item], atol=1e-6)
    for query in _unit(rng, 10):
        assert [item for item, _ in index.query(query, k=10)] == _exact(vectors, query, 10)


def test_a_snapshot_with_tombstones_restores_the_live_labels(rng: np.random.Generator) -> None:
    index = ItemIndex(DIM, seed=2)
    first = _unit(rng, 8)
    index.upsert_many(_ids(8), first)
    index.upsert("item-00003", first[0])  # a tombstone that keeps its id in the metadata
    index.remove("item-00005")
    restored = ItemIndex.restore(index.snapshot())
    assert sorted(restored.ids()) == sorted(set(_ids(8)) - {"item-00005"})
    stored = restored.vector("item-00003")
    assert stored is not None
    np.testing.assert_allclose(stored, first[0], atol=1e-6)
    assert restored.query(first[0], k=2) == index.query(first[0], k=2)


def test_one_batch_can_revive_removed_items_and_add_new_ones_past_capacity(
    rng: np.random.Generator,
) -> None:
    index = ItemIndex(DIM, max_elements=16, seed=2)
    first = _unit(rng, 16)
    index.upsert_many(_ids(16), first)
    for item in _ids(4):
        index.remove(item)
    # The four removed items take their own slots back: the new ones need more room.
    index.upsert_many([*_ids(4), *_ids(4, "new")], np.vstack([first[:4], _unit(rng, 4)]))
    assert len(index) == 20
    assert index.capacity == 32
    assert set(index.ids()) == {*_ids(16), *_ids(4, "new")}
    assert index.query(first[2], k=1)[0][0] == "item-00002"


def test_a_failed_batch_leaves_no_half_added_items(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = ItemIndex(DIM, max_elements=8, seed=2)
    first = _unit(rng, 8)
    index.upsert_many(_ids(8), first)
    index.remove("item-00000")

    def no_memory(graph: object, new_labels: int) -> None:
        raise MemoryError(f"cannot make room for {new_labels} items")

    # hnswlib's own methods are read-only
    monkeypatch.setattr(operators.index, "_reserve", no_memory)
    with pytest.raises(MemoryError):
        index.upsert_many(["item-00000", *_ids(3, "new")], _unit(rng, 4))
    assert set(index.ids()) == set(_ids(8)) - {"item-00000"}
    assert "item-00000" not in index
    for query in _unit(rng, 5):
        assert "item-00000" not in {item for item, _ in index.query(query, k=7)}
    monkeypatch.undo()
    index.upsert_many(["item-00000", *_ids(3, "new")], np.vstack([first[:1], _unit(rng, 3)]))
    assert len(index) == 11
    assert index.query(first[0], k=1)[0][0] == "item-00000"


def test_random_churn_keeps_results_equal_to_exact_search(rng: np.random.Generator) -> None:
    """Upserts, updates, removals and returns in random order, against a dict model."""
    index = ItemIndex(DIM, max_elements=4, ef_search=400, seed=5)
    model: dict[str, Matrix] = {}
    universe = _ids(150)
    for step in range(1500):
        item = universe[int(rng.integers(len(universe)))]
        if item in model and rng.random() < 0.4:
            assert index.remove(item)
            del model[item]
        else:
            vector = rng.standard_normal(DIM)
            index.upsert(item, vector)
            model[item] = vector
        if step % 100 == 99:
            assert len(index) == len(model)
            assert set(index.ids()) == set(model)
            for query in _unit(rng, 3):
                result = [found for found, _ in index.query(query, k=10)]
                assert result == _exact(model, query, 10)
    assert index.capacity <= 256  # slots are reused: growth follows live items, not churn


def test_the_index_grows_geometrically_past_max_elements(rng: np.random.Generator) -> None:
    index = ItemIndex(DIM, max_elements=8, seed=4)
    vectors = _unit(rng, 1000)
    ids = _ids(1000)
    capacities = [index.capacity]
    for start in range(0, 1000, 37):  # uneven batches cross the capacity mid-batch
        index.upsert_many(ids[start : start + 37], vectors[start : start + 37])
        capacities.append(index.capacity)
    index.upsert("one-more", vectors[0])
    assert len(index) == 1001
    growths = sorted(set(capacities))
    assert all(later >= 2 * earlier for earlier, later in itertools.pairwise(growths))
    assert len(growths) <= 8  # a handful of resizes, not one per batch
    assert 1000 <= capacities[-1] < 2 * 1000
    for i in range(0, 1000, 50):
        assert index.query(vectors[i], k=2)[0][1] == pytest.approx(1.0, abs=1e-5)
        assert {item for item, _ in index.query(vectors[i], k=2)} >= {ids[i]} - {"item-00000"}


def test_a_batch_with_an_invalid_vector_changes_nothing(rng: np.random.Generator) -> None:
    index = ItemIndex(DIM, seed=0)
    index.upsert("a", _unit(rng, 1)[0])
    batch = _unit(rng, 3)
    batch[1] = 0.0
    with pytest.raises(ValueError, match="non-zero"):
        index.upsert_many(["b", "c", "d"], batch)
    batch[1, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        index.upsert_many(["b", "c", "d"], batch)
    with pytest.raises(ValueError, match="shape"):
        index.upsert("b", [1.0, 2.0])
    with pytest.raises(ValueError, match="2 item ids but 3 vectors"):
        index.upsert_many(["b", "c"], _unit(rng, 3))
    with pytest.raises(ValueError, match="shape"):
        index.query([1.0], k=1)
    assert index.ids() == ["a"]


def test_a_query_vector_is_checked_and_normalised_as_a_stored_one(
    rng: np.random.Generator,
) -> None:
    """One vector takes a shorter way to unit length than a batch, to the same last bit."""
    vectors = rng.standard_normal((500, DIM)) * rng.uniform(1e-3, 1e3, (500, 1))
    rows = _normalised_rows(vectors, DIM)
    for vector, row in zip(vectors, rows, strict=True):
        np.testing.assert_array_equal(_normalised(vector, DIM), row)
    index = ItemIndex(DIM, seed=0)
    index.upsert("a", _unit(rng, 1)[0])
    for bad, message in ((np.zeros(DIM), "non-zero"), (np.full(DIM, np.nan), "finite"),
                         (np.full(DIM, np.inf), "finite")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            index.query(bad, k=1)


def test_build_upserts_in_order_and_the_last_duplicate_wins(rng: np.random.Generator) -> None:
    vectors = _unit(rng, 3)
    items = [("x", vectors[0]), ("y", vectors[1]), ("x", vectors[2])]
    index = ItemIndex.build(DIM, iter(items), batch_size=2, seed=0)
    assert index.ids() == ["y", "x"]  # in the order of the last upserts
    stored = index.vector("x")
    assert stored is not None
    np.testing.assert_allclose(stored, vectors[2], atol=1e-6)


# -- querying ---------------------------------------------------------------------------


def test_an_empty_index_answers_with_nothing() -> None:
    index = ItemIndex(DIM)
    query = np.ones(DIM)
    assert len(index) == 0
    assert index.query(query, k=10) == []
    assert index.neighbours("anything", k=10) == []
    index.upsert("only", query)
    assert index.query(query, k=0) == []
    assert index.query(query, k=10, exclude={"only"}) == []
    index.remove("only")
    assert index.query(query, k=10) == []


def test_fewer_than_k_only_when_fewer_live_items_qualify(rng: np.random.Generator) -> None:
    index = ItemIndex(DIM, seed=0)
    index.upsert_many(_ids(12), _unit(rng, 12))
    index.remove("item-00000")
    query = _unit(rng, 1)[0]
    assert len(index.query(query, k=50)) == 11
    excluded = {"item-00001", "item-00002", "not-an-item"}
    result = index.query(query, k=50, exclude=excluded)
    assert {item for item, _ in result} == set(_ids(12)) - excluded - {"item-00000"}


@pytest.mark.parametrize("excluded_count", [5, 150, 1200])  # over-fetch, and filter, paths
def test_excluded_items_are_never_returned_and_k_is_still_met(
    excluded_count: int, rng: np.random.Generator
) -> None:
    assert (excluded_count > operators.index._OVERFETCH_LIMIT) == (excluded_count == 1200)
    vectors = _unit(rng, 2000)
    live = dict(zip(_ids(2000), vectors, strict=True))
    index = ItemIndex.build(DIM, live.items(), seed=6)
    query = _unit(rng, 1)[0]
    # Exclude the items nearest the query: the hardest case for over-fetching.
    excluded = set(_exact(live, query, excluded_count))
    result = index.query(query, k=10, exclude=excluded)
    assert len(result) == 10
    assert not {item for item, _ in result} & excluded
    exact = _exact(live, query, 10, excluded)
    assert len({item for item, _ in result} & set(exact)) >= 8


def test_neighbours_exclude_the_item_itself(
    small: tuple[ItemIndex, dict[str, Matrix]],
) -> None:
    index, live = small
    result = index.neighbours("item-00010", k=5, exclude={"item-00011"})
    assert [item for item, _ in result] == _exact(
        live, live["item-00010"], 5, {"item-00010", "item-00011"}
    )


def test_an_excluded_frozenset_stays_excluded_after_its_items_are_written_again(
    small: tuple[ItemIndex, dict[str, Matrix]], rng: np.random.Generator
) -> None:
    """The labels of an exclusion are kept for the next search only until a write."""
    index, live = small
    query = live["item-00020"]
    nearest = _exact(live, query, 3)
    exclude = frozenset(nearest)
    assert not {item for item, _ in index.query(query, 10, exclude)} & exclude
    # the excluded items move to new labels (an upsert), and one comes back after a removal
    moved = {item: live[item] + 0.01 * _unit(rng, 1)[0] for item in nearest}
    index.upsert_many(list(moved), np.stack(list(moved.values())))
    index.remove(nearest[0])
    index.upsert(nearest[0], moved[nearest[0]])
    live.update(moved)
    found = [item for item, _ in index.query(query, 10, exclude)]
    assert found == _exact(live, query, 10, set(exclude))


def test_a_search_leaves_out_one_more_id_without_it_in_the_exclusions(
    small: tuple[ItemIndex, dict[str, Matrix]],
) -> None:
    index, live = small
    query = live["item-00030"]
    exclude = frozenset({"item-00031"})
    found = [item for item, _ in index.query(query, 5, exclude, also="item-00030")]
    assert found == _exact(live, query, 5, {"item-00030", "item-00031"})
    # the same exclusions again, without the extra id: it is back
    assert index.query(query, 5, exclude)[0][0] == "item-00030"


# -- persistence ------------------------------------------------------------------------


def _churned(rng: np.random.Generator) -> ItemIndex:
    index = ItemIndex(DIM, max_elements=64, ef_search=100, seed=9)
    index.upsert_many(_ids(300), _unit(rng, 300))
    for item in _ids(300)[::4]:
        index.remove(item)
    index.upsert_many(_ids(20, "late"), _unit(rng, 20))
    return index


def test_snapshot_restore_round_trips_ids_results_and_parameters(
    rng: np.random.Generator,
) -> None:
    index = _churned(rng)
    restored = ItemIndex.restore(index.snapshot())
    assert restored.ids() == index.ids()
    assert restored.params() == index.params()
    assert restored.capacity == index.capacity
    assert restored.snapshot() == index.snapshot()
    for query in _unit(rng, 20):
        assert restored.query(query, k=10) == index.query(query, k=10)
    # Still fully usable: a removed item returns, a new one arrives, slots are reused.
    vectors = _unit(rng, 2)
    restored.upsert("item-00000", vectors[0])
    restored.upsert("brand-new", vectors[1])
    assert restored.query(vectors[0], k=1)[0][0] == "item-00000"
    assert restored.query(vectors[1], k=1)[0][0] == "brand-new"
    assert restored.capacity == index.capacity


def test_pickling_goes_through_the_snapshot(rng: np.random.Generator) -> None:
    index = _churned(rng)
    copy = pickle.loads(pickle.dumps(index))
    assert copy.snapshot() == index.snapshot()


def test_the_same_seed_builds_the_same_index(rng: np.random.Generator) -> None:
    items = list(zip(_ids(500), _unit(rng, 500), strict=True))
    same = [ItemIndex.build(DIM, items, seed=1).snapshot() for _ in range(2)]
    other = ItemIndex.build(DIM, items, seed=2).snapshot()
    assert same[0] == same[1]
    assert other != same[0]


def test_save_load_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    index = _churned(rng)
    path = tmp_path / "state" / "items.hnsw"
    index.save(path)
    loaded = ItemIndex.load(path, dim=DIM)
    assert loaded.snapshot() == index.snapshot()
    assert path.read_bytes() == index.snapshot()
    assert os.listdir(path.parent) == ["items.hnsw"]  # no temporary file left behind


def test_a_failed_save_leaves_the_previous_file_intact(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "items.hnsw"
    before = ItemIndex(DIM, seed=0)
    before.upsert_many(_ids(10), _unit(rng, 10))
    before.save(path)
    after = _churned(rng)

    def crash(src: object, dst: object) -> None:
        raise OSError("disk went away mid-save")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="mid-save"):
        after.save(path)
    monkeypatch.undo()
    assert ItemIndex.load(path).ids() == _ids(10)
    assert os.listdir(tmp_path) == ["items.hnsw"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "checksum"),
        (lambda data: data[:20], "truncated header"),
        (lambda data: data[:100] + bytes([data[100] ^ 0xFF]) + data[101:], "checksum"),
        (lambda data: data[:-1] + bytes([data[-1] ^ 0x01]), "checksum"),
        (lambda data: b"not an index at all" * 10, "magic"),
        (lambda data: data[:8] + (99).to_bytes(4, "little") + data[12:], "version 99"),
        (lambda data: b"", "truncated header"),
    ],
    ids=["half", "header-only", "flipped-metadata", "flipped-graph", "garbage", "version", "empty"],
)
def test_a_corrupt_file_raises_index_load_error(
    tmp_path: Path,
    rng: np.random.Generator,
    damage: object,
    message: str,
) -> None:
    assert callable(damage)
    index = _churned(rng)
    path = tmp_path / "items.hnsw"
    index.save(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(IndexLoadError, match=message):
        ItemIndex.load(path)
    with pytest.raises(IndexLoadError):
        ItemIndex.restore(path.read_bytes())


def test_a_missing_or_stale_file_raises_index_load_error(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    with pytest.raises(IndexLoadError, match="cannot read"):
        ItemIndex.load(tmp_path / "absent.hnsw")
    path = tmp_path / "items.hnsw"
    _churned(rng).save(path)
    with pytest.raises(IndexLoadError, match="holds 16-d vectors, expected 32-d"):
        ItemIndex.load(path, dim=32)


# -- threads ----------------------------------------------------------------------------


def test_queries_during_upserts_from_other_threads_stay_valid(rng: np.random.Generator) -> None:
    index = ItemIndex(DIM, max_elements=16, seed=7)
    index.upsert_many(_ids(100), _unit(rng, 100))
    writer_vectors = _unit(rng, 1500)
    query_vectors = _unit(rng, 64)
    all_ids = set(_ids(1500))
    stop = threading.Event()
    errors: list[BaseException] = []
    answered = [0] * 4

    def write() -> None:
        try:
            for i in range(100, 1500):
                index.upsert(f"item-{i:05d}", writer_vectors[i])
                if i % 7 == 0:
                    index.remove(f"item-{i - 50:05d}")
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            stop.set()

    def read(slot: int) -> None:
        try:
            while not stop.is_set():
                query = query_vectors[answered[slot] % len(query_vectors)]
                result = index.query(query, k=10, exclude={"item-00001"})
                found = [item for item, _ in result]
                assert len(found) == 10
                assert len(set(found)) == 10
                assert set(found) <= all_ids - {"item-00001"}
                answered[slot] += 1
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=read, args=(slot,)) for slot in range(4)]
    threads.append(threading.Thread(target=write))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert all(count > 0 for count in answered)
    assert len(index) == 1500 - len([i for i in range(100, 1500) if i % 7 == 0])
    assert index.capacity >= 1500


# -- quality ----------------------------------------------------------------------------


def test_recall_at_10_reaches_095_on_5000_random_64d_vectors() -> None:
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 5000, dim=64)
    queries = _unit(rng, 500, dim=64)
    ids = _ids(5000)
    index = ItemIndex.build(64, zip(ids, vectors, strict=True))  # the default parameters
    exact = np.argpartition(-(queries @ vectors.T), 10, axis=1)[:, :10]
    hits = sum(
        len({ids[i] for i in truth} & {item for item, _ in index.query(query, k=10)})
        for query, truth in zip(queries, exact, strict=True)
    )
    recall = hits / (10 * len(queries))
    assert recall >= 0.95, f"recall@10 = {recall:.4f}"


def test_a_restored_index_hands_back_the_stored_vectors(rng: np.random.Generator) -> None:
    vectors = _unit(rng, 30)
    index = ItemIndex.build(DIM, zip(_ids(30), vectors, strict=True), seed=5)
    index.remove("item-00003")

    restored = ItemIndex.restore(index.snapshot())

    for item, vector in zip(_ids(30), vectors, strict=True):
        got = restored.vector(item)
        if item == "item-00003":
            assert got is None
        else:
            assert got is not None and np.array_equal(got, vector.astype(np.float32))
    assert restored.neighbours("item-00007", k=5) == index.neighbours("item-00007", k=5)
