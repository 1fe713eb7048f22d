"""Each process's in-memory vector index of each gallery it searches, caught up with the
database (`changes`) before every use: built from the rows on first use after a start,
then only what other requests and processes wrote since. Searches see only committed
writes, whole; the index is never written to disk, so there is no file to be
half-written."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from mec_platform.tables import Gallery, GalleryItem
from serving.vector_index import VectorIndex


@dataclass
class _Cached:
    index: VectorIndex
    seq: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


_cache: dict[int, tuple[tuple, _Cached]] = {}  # gallery id -> (identity, index)
_cache_lock = threading.Lock()


@contextmanager
def current(session: Session, gallery: Gallery) -> Iterator[VectorIndex]:
    """The gallery's index with every write committed up to now, held for the caller's
    use (searches of one gallery take turns with its catching up)."""
    identity = (gallery.created_at, gallery.model_version, gallery.dim)  # ids can be reused
    with _cache_lock:
        known = _cache.get(gallery.id)
        if known is None or known[0] != identity:
            known = _cache[gallery.id] = (identity, _Cached(VectorIndex(gallery.dim)))
    cached = known[1]
    with cached.lock:
        if cached.seq < gallery.seq:
            last = cached.seq
            for last, rows in changes(session, gallery.id, cached.seq):  # noqa: B007
                cached.index.delete([item_id for item_id, _, vector in rows if vector is None])
                live = [row for row in rows if row[2] is not None]
                if live:
                    cached.index.upsert([r[0] for r in live],
                                        np.frombuffer(b"".join(r[2] for r in live), np.float32),
                                        [r[1] for r in live])
            cached.seq = last  # only once all of it is in (upserts are safe to repeat)
        yield cached.index


def forget(gallery_id: int) -> None:
    """Drop a deleted gallery's index from this process."""
    with _cache_lock:
        _cache.pop(gallery_id, None)


def changes(session: Session, gallery_id: int, after: int,
            chunk: int = 20_000) -> Iterator[tuple[int, list[tuple]]]:
    """(seq, [(item_id, metadata, vector or None for a deletion), ...]) in seq order,
    for the writes after seq `after`, a chunk of rows at a time."""
    query = (select(GalleryItem.seq, GalleryItem.item_id, GalleryItem.meta,
                    GalleryItem.vector)
             .where(GalleryItem.gallery_id == gallery_id, GalleryItem.seq > after)
             .order_by(GalleryItem.seq, GalleryItem.id)
             .execution_options(yield_per=chunk))
    for part in session.execute(query).partitions():
        yield part[-1].seq, [(r.item_id, r.meta, r.vector) for r in part]
