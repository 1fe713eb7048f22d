"""kNN and linear-probe protocols."""

import pytest
import torch
import torch.nn.functional as F

from mec_core.evaluate import evaluate, knn, linear_probe


def knn_reference(train_f, train_y, test_f, k, t, classes):
    """Weighted kNN written one query at a time."""
    scores = []
    for q in test_f:
        sims = F.cosine_similarity(train_f, q[None], dim=1)
        top = sims.argsort(descending=True)[:k]
        votes = torch.zeros(classes)
        for i in top:
            votes[train_y[i]] += torch.exp(sims[i] / t)
        scores.append(votes)
    return torch.stack(scores)


def test_knn__equals_one_query_at_a_time_reference():
    g = torch.Generator().manual_seed(0)
    train_f, test_f = torch.randn(200, 16, generator=g), torch.randn(50, 16, generator=g)
    train_y, test_y = torch.randint(5, (200,), generator=g), torch.randint(5, (50,), generator=g)
    ref = knn_reference(train_f, train_y, test_f, 20, 0.1, 5)
    expected_top1 = 100 * (ref.argmax(1) == test_y).float().mean().item()
    got = knn(train_f, train_y, test_f, test_y, k=20, temperature=0.1, chunk=7)
    assert got["top1"] == pytest.approx(expected_top1)
    assert got["top5"] == 100.0  # 5 classes


def test_knn_and_linear__separable_clusters_are_classified():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(4, 32, generator=g) * 5
    ytr, yte = torch.randint(4, (400,), generator=g), torch.randint(4, (100,), generator=g)
    ftr = centres[ytr] + torch.randn(400, 32, generator=g)
    fte = centres[yte] + torch.randn(100, 32, generator=g)
    assert knn(ftr, ytr, fte, yte)["top1"] == 100.0
    assert linear_probe(ftr, ytr, fte, yte, steps=50)["top1"] == 100.0
    shuffled = ytr[torch.randperm(400, generator=g)]  # labels carry no information
    assert knn(ftr, shuffled, fte, yte)["top1"] < 60.0


def test_evaluate__needs_exactly_one_encoder():
    with pytest.raises(ValueError, match="exactly one"):
        evaluate("knn", "digits")
    with pytest.raises(ValueError, match="exactly one"):
        evaluate("knn", "digits", backbone="convnet", pixels=True)
    with pytest.raises(ValueError, match="protocol must be"):
        evaluate("svm", "digits", pixels=True)


def test_evaluate__random_init_and_pixels_report_accuracy():
    pixels = evaluate("knn", "digits", pixels=True)
    rand = evaluate("linear", "digits", backbone="convnet", steps=50)
    assert pixels["encoder"] == "raw pixels" and pixels["feature_dim"] == 3 * 16 * 16
    assert pixels["top1"] > 90.0  # digits are easy for kNN on pixels
    assert 10.0 < rand["top1"] <= 100.0 and rand["test_size"] == 360


def test_evaluate__reports_the_images_embedded_of_all_as_it_goes():
    seen = []
    result = evaluate("knn", "digits", pixels=True, train_limit=700, test_limit=300,
                      on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(512, 1000), (700, 1000), (1000, 1000)]  # batches of 512, train then test
    assert result["train_size"] + result["test_size"] == 1000
