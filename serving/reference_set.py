"""A deployment's reference set: embeddings of labelled images in a FAISS index, queried
by inner product (= cosine similarity, the embeddings being unit vectors), behind its
/search endpoint. (Apps' own collections of items are galleries: serving.vector_index.)"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

EXACT_LIMIT = 200_000  # above this many items an inverted-file index replaces the exact one
IVF_NPROBE = 16  # lists searched per query (bench/bench_knn.py: recall@10 1.000 at 1M)
# the files' names inside the archives: those already in model stores carry these
INDEX_FILE, META_FILE = "gallery.faiss", "gallery.json"


@dataclass
class ReferenceSet:
    index: faiss.Index
    ids: list[str]
    labels: list[str]
    kind: str

    @staticmethod
    def build(embeddings: np.ndarray, ids: list[str], labels: list[str],
              kind: str = "auto") -> ReferenceSet:
        """Index (N, D) unit vectors; kind: exact, ivf, hnsw, or auto (exact up to
        EXACT_LIMIT items, ivf above)."""
        if len(embeddings) != len(ids) or len(ids) != len(labels):
            raise ValueError(f"{len(embeddings)} embeddings, {len(ids)} ids, "
                             f"{len(labels)} labels")
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        if kind == "auto":
            kind = "exact" if len(vectors) <= EXACT_LIMIT else "ivf"
        dim = vectors.shape[1]
        if kind == "exact":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = 128
        elif kind == "ivf":
            index = trained_ivf(vectors)
        else:
            raise ValueError(f"index kind must be exact, ivf, hnsw or auto, got {kind!r}")
        index.add(vectors)
        return ReferenceSet(index, list(ids), list(labels), kind)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        (directory / META_FILE).write_text(json.dumps(
            {"kind": self.kind, "ids": self.ids, "labels": self.labels}))

    @staticmethod
    def load(directory: Path, gpu: int | None = None) -> ReferenceSet:
        """Read a saved reference set; an exact index moves to GPU `gpu` when this FAISS build
        has GPU support (faiss-gpu) and the GPU exists, and stays on the CPU otherwise.
        On the CPU the index's vectors stay the pages of its file, mapped read-only
        (IO_FLAG_MMAP_IFC), so that the workers of a deployment, which load the same
        extracted archive, hold one copy in memory between them and not one each (123 MB
        for 60,000 vectors of 512)."""
        meta = json.loads((directory / META_FILE).read_text())
        index = faiss.read_index(str(directory / INDEX_FILE), faiss.IO_FLAG_MMAP_IFC)
        if gpu is not None and meta["kind"] == "exact" and _gpus() > gpu:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu, index)
        return ReferenceSet(index, meta["ids"], meta["labels"], meta["kind"])

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> list[list[dict]]:
        """Top-k items {id, label, score} for each query (Q, D)."""
        if len(self) == 0:
            raise ValueError("the reference set is empty")
        k = min(k, len(self))
        scores, idx = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [[{"id": self.ids[i], "label": self.labels[i], "score": float(s)}
                 for s, i in zip(row_s, row_i) if i >= 0] for row_s, row_i in zip(scores, idx)]


def _gpus() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def vote(neighbours: list[dict]) -> str | None:
    """Majority label among the neighbours (ties: the higher summed score)."""
    if not neighbours:
        return None
    counts = Counter(n["label"] for n in neighbours)
    scores = Counter()
    for n in neighbours:
        scores[n["label"]] += n["score"]
    return max(counts, key=lambda label: (counts[label], scores[label]))


def trained_ivf(vectors: np.ndarray) -> faiss.Index:
    """Inverted lists (4 sqrt(N) of them) over exact inner products, k-means trained on at
    most 100,000 of the vectors."""
    dim = vectors.shape[1]
    lists = max(1, min(int(4 * np.sqrt(len(vectors))), len(vectors) // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).permutation(len(vectors))[:100_000]
    index.train(vectors[sample])
    index.nprobe = IVF_NPROBE
    return index
