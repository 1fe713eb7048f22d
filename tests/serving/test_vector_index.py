"""The galleries' mutable index: search equals brute force over the living, filtered
items, through upserts, deletes, compaction and the switch to an inverted file."""

from __future__ import annotations

import numpy as np
import pytest

from serving import vector_index
from serving.vector_index import FilterError, VectorIndex, parse_filter


def _unit(rng, n, dim=16):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(vectors: dict, metas: dict, query, k, keep=lambda m: True):
    ids = [i for i in vectors if keep(metas[i])]
    scores = np.array([vectors[i] @ query for i in ids])
    return [ids[j] for j in np.argsort(-scores, kind="stable")[:k]]


def test_search_is_brute_force_over_the_living_filtered_items():
    rng = np.random.default_rng(0)
    index = VectorIndex(16)
    vectors, metas = {}, {}
    ids = [f"item-{i}" for i in range(300)]
    batch = _unit(rng, 300)
    colour = ["red", "green", "blue"]
    for i, item_id in enumerate(ids):
        vectors[item_id] = batch[i]
        metas[item_id] = {"colour": colour[i % 3], "size": i % 5, "sale": i % 2 == 0}
    index.upsert(ids, batch, [metas[i] for i in ids])
    # replace 50 (new vectors and metadata), delete 40
    replaced = _unit(rng, 50)
    for j, item_id in enumerate(ids[:50]):
        vectors[item_id], metas[item_id] = replaced[j], {"colour": "red", "size": 9}
    index.upsert(ids[:50], replaced, [metas[i] for i in ids[:50]])
    assert index.delete(ids[100:140] + ["never-added"]) == 40
    for item_id in ids[100:140]:
        del vectors[item_id], metas[item_id]
    assert len(index) == 260

    for query in _unit(rng, 5):
        got = [hit["id"] for hit in index.search(query, 10)[0]]
        assert got == _brute(vectors, metas, query, 10)
        red_small = parse_filter({"colour": "red", "size": {"in": [0, 1, 9]}})
        got = index.search(query, 10, red_small)[0]
        assert [h["id"] for h in got] == _brute(
            vectors, metas, query, 10,
            lambda m: m["colour"] == "red" and m["size"] in (0, 1, 9))
        assert all(h["metadata"] == metas[h["id"]] for h in got)
        assert got[0]["score"] == pytest.approx(float(vectors[got[0]["id"]] @ query), abs=1e-5)
    assert index.get(ids[0])[1] == {"colour": "red", "size": 9}
    assert index.get(ids[100]) is None
    assert set(index.matching(parse_filter({"size": 9}))) == set(ids[:50])


def test_filters_compare_json_types_and_ask_for_nothing_else():
    index = VectorIndex(2)
    index.upsert(["n", "s", "b", "z", "nested"], np.eye(2)[[0, 0, 0, 0, 0]],
                 [{"v": 1}, {"v": "1"}, {"v": True}, {"v": None}, {"v": [1]}])
    assert index.matching(parse_filter({"v": 1.0})) == ["n"]
    assert index.matching(parse_filter({"v": "1"})) == ["s"]
    assert index.matching(parse_filter({"v": True})) == ["b"]
    assert index.matching(parse_filter({"v": None})) == ["z"]
    assert index.matching(parse_filter({"v": {"in": []}})) == []
    assert index.matching(parse_filter({"absent": 1})) == []
    assert index.search(np.array([1, 0]), 10, parse_filter({"v": "nope"})) == [[]]
    for bad, named in (({"v": {"gt": 1}}, "filter.v"), ({"v": [1, 2]}, "filter.v"),
                       ({"v": {"in": [{"x": 1}]}}, "filter.v"), ([1], "filter")):
        with pytest.raises(FilterError, match=named):
            parse_filter(bad)


def test_a_repeated_id_in_one_batch_keeps_the_last_and_search_can_exclude_one():
    index = VectorIndex(2)
    index.upsert(["a", "b", "a"], np.array([[1, 0], [0, 1], [0.6, 0.8]]),
                 [{"n": 1}, {"n": 2}, {"n": 3}])
    assert len(index) == 2 and index.get("a")[1] == {"n": 3}
    hits = index.search(np.array([0.6, 0.8]), 5, exclude="a")[0]
    assert [h["id"] for h in hits] == ["b"]


def test_compaction_and_the_inverted_file_keep_the_answers(monkeypatch):
    monkeypatch.setattr(vector_index, "EXACT_LIMIT", 2000)
    monkeypatch.setattr(vector_index, "FILTERED_EXACT_LIMIT", 1000)
    rng = np.random.default_rng(1)
    centres = _unit(rng, 40, 32)
    points = centres[rng.integers(0, 40, 6000)] + 0.05 * rng.normal(size=(6000, 32))
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    ids = [str(i) for i in range(6000)]
    metas = [{"shard": i % 10} for i in range(6000)]
    index = VectorIndex(32)
    index.upsert(ids[:1000], points[:1000], metas[:1000])
    assert index.ivf is None
    index.upsert(ids[1000:], points[1000:], metas[1000:])
    assert index.ivf is not None  # over EXACT_LIMIT living items
    exact = VectorIndex(32)  # the same items, searched exactly
    monkeypatch.setattr(vector_index, "EXACT_LIMIT", 10**9)
    exact.upsert(ids, points, metas)
    monkeypatch.setattr(vector_index, "EXACT_LIMIT", 2000)
    queries = points[rng.integers(0, 6000, 50)]
    found = [{h["id"] for h in row} for row in index.search(queries, 10)]
    truth = [{h["id"] for h in row} for row in exact.search(queries, 10)]
    recall = np.mean([len(f & t) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.9
    # a filter keeping 10 % (600 < FILTERED_EXACT_LIMIT candidates) is searched exactly
    tenth = parse_filter({"shard": 3})
    assert [[h["id"] for h in row] for row in index.search(queries, 10, tenth)] == \
        [[h["id"] for h in row] for row in exact.search(queries, 10, tenth)]
    # a wide filter goes through the inverted file, which skips what it excludes
    wide = parse_filter({"shard": {"in": list(range(9))}})
    rows = index.search(queries, 10, wide)
    assert all(h["metadata"]["shard"] != 9 for row in rows for h in row)
    truth = [{h["id"] for h in row} for row in exact.search(queries, 10, wide)]
    assert np.mean([len({h["id"] for h in r} & t) / 10 for r, t in zip(rows, truth)]) >= 0.9
    # an item replaced while the inverted file serves is found at its new place only
    index.upsert([ids[0]], -points[0:1], [{"shard": 0}])
    hits = index.search(-points[0], 3)[0]
    assert hits[0]["id"] == ids[0] and ids[0] not in [h["id"] for h in hits[1:]]
    assert ids[0] not in [h["id"] for h in index.search(points[0], 10)[0]]
    # deleting most items compacts the slots; answers stay those of brute force
    index.delete(ids[:5000])
    assert index.used == len(index) == 1000
    survivors = {i: points[int(i)] for i in ids[5000:]}
    got = [h["id"] for h in index.search(points[5500], 10)[0]]
    assert got == _brute(survivors, dict.fromkeys(survivors, {}), points[5500], 10)
