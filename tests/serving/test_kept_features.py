"""A deploy's reference set reuses the features the model's evaluation kept, only when
they are of the same network and the same images."""

import numpy as np
import pytest
import torch

from mec_core.evaluate import evaluate
from mec_core.kept_features import Kept
from serving.package import build_reference_set


def _evaluated(checkpoint, train_limit: int) -> Kept:
    kept = []
    evaluate("knn", "synthetic", checkpoint_path=str(checkpoint), train_limit=train_limit,
             test_limit=20, on_train_features=lambda digest, f: kept.append((digest, f)))
    (digest, features), = kept
    return Kept(digest, features.numpy(), job_id=7)


def _store(*kept: Kept):
    """Files found by their fingerprint, as worker.kept.finder finds them; records each
    fingerprint asked for."""
    asked = []

    def find(digest: str) -> Kept | None:
        asked.append(digest)
        return next((k for k in kept if k.fingerprint == digest), None)
    find.asked = asked
    return find


def test_reference_set__reuses_the_evaluation_features_of_the_same_images(trained):
    checkpoint, export_dir, _ = trained
    kept = _evaluated(checkpoint, 300)
    assert kept.features.shape[0] == 300
    seen = []
    reused, reused_from = build_reference_set(export_dir, "synthetic", None, "train", 300,
                                              kept=_store(kept),
                                              on_progress=lambda *a: seen.append(a))
    assert reused_from == 7 and seen == [(300, 300)]  # no batch embedded: one report, all done
    embedded, embedded_from = build_reference_set(export_dir, "synthetic", None, "train", 300)
    assert embedded_from is None
    # the same unit vectors as embedding them at deploy (up to another batch's rounding)
    got = reused.index.reconstruct_n(0, 300)
    want = embedded.index.reconstruct_n(0, 300)
    assert np.abs(got - want).max() < 1e-4 and np.allclose(np.linalg.norm(got, axis=1), 1)
    assert reused.labels == embedded.labels and reused.ids == embedded.ids
    queries = torch.from_numpy(want[:20])
    assert [r[0]["id"] for r in reused.search(queries.numpy(), 1)] == \
        [r[0]["id"] for r in embedded.search(queries.numpy(), 1)]


def test_reference_set__embeds_when_the_images_or_the_network_differ(trained):
    checkpoint, export_dir, _ = trained
    kept = _evaluated(checkpoint, 300)
    store, seen = _store(kept), []
    _, reused = build_reference_set(export_dir, "synthetic", None, "train", 299, kept=store,
                                    on_progress=lambda *a: seen.append(a))
    assert reused is None and seen[-1] == (299, 299)
    # the projector's outputs are other features of the same images
    _, reused = build_reference_set(export_dir, "synthetic", None, "train", 300, kept=store,
                                    projector=True)
    assert reused is None
    assert len(set(store.asked)) == 2 and kept.fingerprint not in store.asked


def test_reference_set__embeds_over_a_file_found_under_another_fingerprint(trained, caplog):
    """A file moved in the store: found under these images' fingerprint, another's inside."""
    checkpoint, export_dir, _ = trained
    kept = _evaluated(checkpoint, 300)
    moved = Kept(kept.fingerprint[::-1], kept.features, kept.job_id)
    _, reused = build_reference_set(export_dir, "synthetic", None, "train", 300,
                                    kept=lambda digest: moved)
    assert reused is None and "do not agree with the model" in caplog.text


@pytest.mark.parametrize("damage", ["reversed", "narrower", "fewer rows", "nan", "zeros",
                                    "integers", "3-d"])
def test_reference_set__embeds_over_kept_features_that_do_not_agree_with_the_model(
        trained, damage, caplog):
    """A file damaged or altered in the store, its fingerprint intact: the spot check
    catches it, the deploy embeds and says so in its log."""
    checkpoint, export_dir, _ = trained
    kept = _evaluated(checkpoint, 300)
    f = kept.features
    bad = {"reversed": f[::-1], "narrower": f[:, : f.shape[1] // 2], "fewer rows": f[:299],
           "nan": np.full_like(f, np.nan), "zeros": np.zeros_like(f),
           "integers": f.astype(np.int64), "3-d": f[None]}[damage]
    references, reused = build_reference_set(export_dir, "synthetic", None, "train", 300,
                                             kept=_store(Kept(kept.fingerprint, bad, kept.job_id)))
    assert reused is None and "do not agree with the model" in caplog.text
    embedded, _ = build_reference_set(export_dir, "synthetic", None, "train", 300)
    assert np.abs(references.index.reconstruct_n(0, 300)
                  - embedded.index.reconstruct_n(0, 300)).max() < 1e-5


def test_kept__round_trips_and_reads_anything_else_as_nothing(tmp_path):
    kept = Kept("ab" * 32, np.arange(12, dtype=np.float32).reshape(3, 4), job_id=12)
    kept.save(tmp_path / "k.npz")
    back = Kept.read(tmp_path / "k.npz")
    assert back.fingerprint == kept.fingerprint and back.job_id == 12
    assert back.features.dtype == np.float32 and (back.features == kept.features).all()
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    assert Kept.read(tmp_path / "bad.npz") is None
    assert Kept.read(tmp_path / "other.npz") is None
    assert Kept.read(tmp_path / "missing.npz") is None
