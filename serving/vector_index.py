"""A mutable vector index for apps' galleries: items by external id, each a unit vector
and a JSON metadata object; upsert and delete at any time; top-k search by inner product
restricted by a metadata filter (equality and `in` on top-level keys, combined with AND).

Vectors live in append-only slots (an upsert takes a new slot, a delete only clears the
slot's flag), so a write never moves the others; dead slots are compacted away once they
outnumber the living. Search is exact while the gallery holds up to serving.reference_set's
EXACT_LIMIT items; above, an inverted-file index (FAISS) over the slots is trained and
answers, with the filter and the dead slots excluded inside FAISS by a bitmap selector and
more lists probed the narrower the filter. A filter that leaves at most
FILTERED_EXACT_LIMIT candidates is searched exactly over them."""

from __future__ import annotations

import math

import faiss
import numpy as np

from serving.reference_set import EXACT_LIMIT, IVF_NPROBE, trained_ivf

Scalar = str | int | float | bool | None
FILTERED_EXACT_LIMIT = 20_000  # a gallery with an inverted file: fewer candidates, exact


class FilterError(ValueError):
    """A filter that cannot be applied; the message names the key."""


def parse_filter(spec: object) -> dict[str, list[Scalar]]:
    """{"key": value, "other": {"in": [v, ...]}} -> {key: allowed values}; raises
    FilterError naming the key for anything else."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise FilterError("filter: must be an object {\"key\": value or {\"in\": [...]}}")
    allowed = {}
    for key, condition in spec.items():
        if isinstance(condition, dict):
            if set(condition) != {"in"} or not isinstance(condition["in"], list):
                raise FilterError(f"filter.{key}: the only operator is {{\"in\": [values]}}, "
                                  f"got {sorted(condition)}")
            values = condition["in"]
        else:
            values = [condition]
        for value in values:
            if not isinstance(value, Scalar):
                raise FilterError(f"filter.{key}: values must be strings, numbers, booleans "
                                  f"or null, got {type(value).__name__}")
            if isinstance(value, float) and not math.isfinite(value):
                raise FilterError(f"filter.{key}: {value} is not a finite number")
        allowed[key] = values
    return allowed


def _token(value: object) -> tuple | None:
    """What equality compares: 1, 1.0 and true are different from "1" and from each
    other's types as JSON sees them (a bool is not a number here)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null",)
    return None  # lists and objects are kept but not filterable


class VectorIndex:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.vectors = np.empty((1024, dim), np.float32)
        self.used = 0  # slots taken, dead or alive
        self.alive = np.zeros(1024, bool)
        self.ids: list[str] = []  # by slot
        self.meta: list[dict | None] = []
        self.slot_of: dict[str, int] = {}
        self.postings: dict[str, dict[tuple, list[int]]] = {}
        self.ivf: faiss.Index | None = None  # over slots [0, ivf_slots)
        self.ivf_slots = 0

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.slot_of

    def upsert(self, ids: list[str], vectors: np.ndarray, metas: list[dict | None]) -> None:
        """Add items, replacing those whose id is already here (within the batch too: the
        last of a repeated id wins)."""
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        if not len(ids) == len(vectors) == len(metas):
            raise ValueError(f"{len(ids)} ids, {len(vectors)} vectors, {len(metas)} metadata")
        last = {item_id: i for i, item_id in enumerate(ids)}
        if len(last) < len(ids):
            keep = sorted(last.values())
            ids, vectors, metas = [ids[i] for i in keep], vectors[keep], [metas[i] for i in keep]
        self.delete(ids)
        self._reserve(self.used + len(ids))
        start = self.used
        self.vectors[start:start + len(ids)] = vectors
        self.alive[start:start + len(ids)] = True
        for slot, item_id, meta in zip(range(start, start + len(ids)), ids, metas):
            self.slot_of[item_id] = slot
            self.ids.append(item_id)
            self.meta.append(meta)
            for key, value in (meta or {}).items():
                token = _token(value)
                if token is not None:
                    self.postings.setdefault(key, {}).setdefault(token, []).append(slot)
        self.used += len(ids)
        self._index_new_slots()

    def delete(self, ids: list[str]) -> int:
        """Remove these ids (unknown ones are skipped); returns how many were here."""
        gone = [self.slot_of.pop(i) for i in ids if i in self.slot_of]
        self.alive[gone] = False
        if self.used > 4096 and self.used > 2 * len(self):
            self._compact()
        return len(gone)

    def get(self, item_id: str) -> tuple[np.ndarray, dict | None] | None:
        slot = self.slot_of.get(item_id)
        return None if slot is None else (self.vectors[slot].copy(), self.meta[slot])

    def matching(self, allowed: dict[str, list[Scalar]]) -> list[str]:
        """Ids of the items that the parsed filter keeps."""
        return [self.ids[s] for s in np.flatnonzero(self._candidates(allowed))]

    def search(self, queries: np.ndarray, k: int, allowed: dict[str, list[Scalar]] | None = None,
               exclude: str | None = None) -> list[list[dict]]:
        """Top-k {id, score, metadata} for each query (Q, D), best first, among the items
        that the parsed filter `allowed` keeps (and not `exclude`, e.g. the query's own
        item)."""
        queries = np.ascontiguousarray(np.asarray(queries, np.float32).reshape(-1, self.dim))
        mask = self._candidates(allowed or {})
        if exclude in self.slot_of:
            mask[self.slot_of[exclude]] = False
        count = int(mask.sum())
        k = min(k, count)
        if k == 0:
            return [[] for _ in queries]
        if self.ivf is not None and count > FILTERED_EXACT_LIMIT:
            scores, slots = self._search_ivf(queries, k, mask, count)
        else:
            scores, slots = self._search_exact(queries, k, np.flatnonzero(mask))
        return [[{"id": self.ids[s], "score": float(v), "metadata": self.meta[s]}
                 for v, s in zip(row_v, row_s) if s >= 0] for row_v, row_s in zip(scores, slots)]

    def _candidates(self, allowed: dict[str, list[Scalar]]) -> np.ndarray:
        mask = self.alive[:self.used].copy()
        for key, values in allowed.items():
            keep = np.zeros(self.used, bool)
            posting = self.postings.get(key, {})
            for value in values:
                keep[posting.get(_token(value), [])] = True
            mask &= keep
        return mask

    def _search_exact(self, queries: np.ndarray, k: int, slots: np.ndarray):
        every = len(slots) == self.used  # no gather needed
        scores = queries @ (self.vectors[:self.used] if every else self.vectors[slots]).T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-best, axis=1, kind="stable")
        top, best = np.take_along_axis(top, order, axis=1), np.take_along_axis(best, order, 1)
        return best, top if every else slots[top]

    def _search_ivf(self, queries: np.ndarray, k: int, mask: np.ndarray, count: int):
        """The inverted file, skipping what the mask leaves out; it probes more lists the
        fewer items pass, so that as many candidates are compared as without a filter."""
        bits = np.packbits(mask[:self.ivf_slots], bitorder="little")
        selector = faiss.IDSelectorBitmap(self.ivf_slots, faiss.swig_ptr(bits))
        probes = min(self.ivf.nlist, math.ceil(IVF_NPROBE * self.ivf_slots / count))
        params = faiss.SearchParametersIVF(sel=selector, nprobe=probes)
        return self.ivf.search(queries, k, params=params)

    def _index_new_slots(self) -> None:
        """Train the inverted file once the living items pass EXACT_LIMIT, then keep adding
        new slots to it."""
        if self.ivf is None and len(self) > EXACT_LIMIT:
            self.ivf = trained_ivf(self.vectors[:self.used][self.alive[:self.used]])
            self.ivf_slots = 0
        if self.ivf is not None and self.ivf_slots < self.used:
            new = np.arange(self.ivf_slots, self.used)
            self.ivf.add_with_ids(self.vectors[new], new.astype(np.int64))
            self.ivf_slots = self.used

    def _reserve(self, slots: int) -> None:
        if slots > len(self.vectors):
            size = max(slots, 2 * len(self.vectors))
            self.vectors = np.resize(self.vectors, (size, self.dim))
            self.alive = np.concatenate([self.alive, np.zeros(size - len(self.alive), bool)])

    def _compact(self) -> None:
        """Rebuild with the living items only (their slots renumbered)."""
        keep = np.flatnonzero(self.alive[:self.used])
        ids = [self.ids[s] for s in keep]
        vectors, metas = self.vectors[keep].copy(), [self.meta[s] for s in keep]
        self.__init__(self.dim)
        self.upsert(ids, vectors, metas)
