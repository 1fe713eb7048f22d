"""A deployment's reference set as the serving workers load it."""

import sys

import faiss
import numpy as np
import pytest

from serving.reference_set import INDEX_FILE, ReferenceSet


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="reads the process's mappings in /proc")
@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_load__vectors_are_the_files_pages_unwritten_so_workers_share_one_copy(
        tmp_path, file_mappings, kind):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((8000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ReferenceSet.build(vectors, [f"train/{i}" for i in range(len(vectors))],
                       [str(i % 10) for i in range(len(vectors))], kind).save(tmp_path)
    loaded = ReferenceSet.load(tmp_path)
    queries = vectors[:16] + 0.05 * rng.standard_normal((16, 32)).astype(np.float32)
    got = loaded.search(queries, 5)

    mapped = file_mappings((tmp_path / INDEX_FILE).resolve())
    assert mapped, "the index was read into memory, not mapped"
    # read-only and shared: no worker can hold a private copy of a page
    assert {m["perms"] for m in mapped} == {"r--s"}
    if kind == "exact":  # the vectors searched are in the mapping, not a copy of them
        flat = faiss.downcast_index(loaded.index)
        address = faiss.rev_swig_ptr(flat.get_xb(), 1).ctypes.data
        assert any(m["start"] <= address < m["end"] for m in mapped)
    # the same answers as from an index read into memory the usual way
    copy = faiss.read_index(str(tmp_path / INDEX_FILE))
    assert [[n["id"] for n in row] for row in got] == \
        [[f"train/{i}" for i in row] for row in copy.search(queries, 5)[1]]
    assert [row[0]["id"] for row in got] == [f"train/{i}" for i in range(16)]
