"""Request handling without a server: parsing, batching, per-request errors, retrieval."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mec_core.data import synthetic
from serving.embedder import Embedder
from serving.reference_set import ReferenceSet, vote
from serving.service import Service


def png_of(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images():
    return synthetic("test", n=8).images


@pytest.fixture(scope="module")
def knn_service(trained, tmp_path_factory):
    _, export_dir, _ = trained
    reference_dir = tmp_path_factory.mktemp("references")
    from serving.package import build_reference_set

    build_reference_set(export_dir, "synthetic", None, "train", 300)[0].save(reference_dir)
    return Service(export_dir, task="knn", reference_dir=reference_dir, max_k=50)


def test_service__embedding_equals_the_embedder_on_the_same_pixels(trained, images):
    _, export_dir, _ = trained
    service = Service(export_dir)
    answers = service.run([service.parse({"body": png_of(img)}) for img in images[:3]])
    direct = Embedder(export_dir).embed(images[:3])
    got = torch.from_numpy(np.stack([a["embeddings"][0] for a in answers]))
    assert (got - direct).abs().max() < 1e-5
    assert torch.allclose(got.norm(dim=1), torch.ones(3), atol=1e-5)
    assert answers[0]["dim"] == direct.shape[1] and answers[0]["batch_size"] == 3


@pytest.mark.parametrize("accept, binary", [
    ("application/octet-stream", True), ("application/octet-stream; q=1, */*", True),
    ("application/json, application/octet-stream", False), ("*/*", False), (None, False)])
def test_service__answers_raw_float32_when_accept_names_it_first(trained, images, knn_service,
                                                                 accept, binary):
    _, export_dir, _ = trained
    service = Service(export_dir, deployment=3)
    pngs = [png_of(img) for img in images[:2]]
    answer = service.run([service.parse({"body": {"images": [
        base64.b64encode(p).decode() for p in pngs]}})])[0]
    body, kind, headers = service.encode(answer, accept)
    if binary:
        assert kind == "application/octet-stream" and len(body) == 2 * answer["dim"] * 4
        assert headers == {"X-Mec-Dim": str(answer["dim"]), "X-Mec-Batch-Size": "1",
                           "X-Mec-Model-Version": "3"}
        assert np.array_equal(np.frombuffer(body, "<f4").reshape(2, -1),
                              answer["embeddings"])
    else:
        assert kind == "application/json" and headers == {}
        assert np.allclose(json.loads(body)["embeddings"], answer["embeddings"])
    # errors and neighbours have no float32 form: JSON whatever the Accept
    for other in service.run([service.parse({"body": b"garbage"})]) + knn_service.run(
            [knn_service.parse({"body": pngs[0]})]):
        assert service.encode(other, accept)[1] == "application/json"


def test_service__one_bad_request_does_not_fail_its_batch_mates(trained, images):
    _, export_dir, _ = trained
    service = Service(export_dir)
    requests = [{"body": png_of(images[0])}, {"body": b"garbage"}, {"body": b""},
                {"body": {"images": [base64.b64encode(png_of(images[1])).decode()] * 2}},
                {"body": {"images": ["%%%"]}}, {"image": png_of(images[2])}, {}]
    answers = service.run([service.parse(r) for r in requests])
    errors = [a.get("error") for a in answers]
    assert errors[0] is None and len(answers[0]["embeddings"]) == 1
    assert "known format" in errors[1] and errors[2] == "empty image"
    assert errors[3] is None and len(answers[3]["embeddings"]) == 2
    assert "not base64" in errors[4]
    assert errors[5] is None
    assert "send an image" in errors[6]


ODD_VALUES = [float("inf"), float("-inf"), float("nan"), 1e309, 10**400, 2.5, True, None,
              [], {}, "", "1e309", "x" * 10_000]


@pytest.mark.parametrize("field", ["k", "vote", "images", "image"])
def test_service__any_value_of_any_field_fails_its_own_request_only(knn_service, images,
                                                                     field):
    """1 bad request and 7 good ones in one batch, for every odd JSON value of every field
    the handler reads: the bad one gets its own error (or an answer), never an exception."""
    good = {"body": {"images": [base64.b64encode(png_of(images[0])).decode()], "k": 3}}
    for value in ODD_VALUES:
        bad = {"body": good["body"] | {field: value}}
        answers = knn_service.run([knn_service.parse(r) for r in [bad] + [good] * 7])
        assert all(len(a["neighbours"][0]) == 3 for a in answers[1:]), (field, value)


def test_service__knn_equals_brute_force_topk(knn_service, images):
    gallery = knn_service.references
    bank = torch.from_numpy(gallery.index.reconstruct_n(0, len(gallery)))
    queries = knn_service.embedder.embed(images)
    scores, idx = (queries @ bank.T).topk(7, dim=1)
    answers = knn_service.run([knn_service.parse({"image": png_of(img), "k": b"7",
                                                  "vote": b"true"}) for img in images])
    for answer, row_s, row_i in zip(answers, scores, idx):
        got = answer["neighbours"][0]
        assert [n["id"] for n in got] == [gallery.ids[i] for i in row_i.tolist()]
        assert np.allclose([n["score"] for n in got], row_s.numpy(), atol=1e-5)
        assert answer["vote"] == [vote(got)]


@pytest.mark.parametrize("k,message", [(b"0", "between 1 and 50"), (b"51", "between 1 and 50"),
                                       (b"ten", "must be an integer")])
def test_service__k_is_checked(knn_service, images, k, message):
    parsed = knn_service.parse({"image": png_of(images[0]), "k": k})
    assert message in parsed.error


def test_reference_set__empty_and_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="3 embeddings, 2 ids"):
        ReferenceSet.build(np.zeros((3, 4)), ["a", "b"], ["x", "y"])
    empty = ReferenceSet.build(np.zeros((0, 4), dtype=np.float32), [], [])
    with pytest.raises(ValueError, match="reference set is empty"):
        empty.search(np.zeros((1, 4)), 5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_reference_set__approximate_recall_against_exact(kind, tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 32)).astype(np.float32)
    x = centres[rng.integers(0, 50, 5000)] + 0.5 * rng.standard_normal((5000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids, labels = [str(i) for i in range(5000)], ["l"] * 5000
    exact = ReferenceSet.build(x, ids, labels, "exact")
    ReferenceSet.build(x, ids, labels, kind).save(tmp_path)
    approx = ReferenceSet.load(tmp_path)
    assert approx.kind == kind
    q = x[:200] + 0.1 * rng.standard_normal((200, 32)).astype(np.float32)
    hits = sum(len({n["id"] for n in a} & {n["id"] for n in b})
               for a, b in zip(exact.search(q, 10), approx.search(q, 10)))
    assert hits / 2000 > 0.9


def test_service__projector_option_serves_projector_outputs(trained, images):
    _, export_dir, _ = trained
    service = Service(export_dir, projector=True)
    answer = service.run([service.parse({"body": png_of(images[0])})])[0]
    assert answer["dim"] == 32  # proj_dim of the tiny run, not the backbone's 256
