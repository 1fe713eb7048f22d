"""Schedules of the reference recipe."""

import pytest

from mec_core.schedule import lambda_inv, learning_rate, teacher_momentum


def test_lambda_inv__linear_warmup_from_factor_over_lambda_to_one_over_lambda():
    lam = 0.25
    assert lambda_inv(0, 100, lam, 8.0) == pytest.approx(8 / lam)
    assert lambda_inv(50, 100, lam, 8.0) == pytest.approx(4.5 / lam)
    assert lambda_inv(100, 100, lam, 8.0) == pytest.approx(1 / lam)
    assert lambda_inv(5000, 100, lam, 8.0) == pytest.approx(1 / lam)
    values = [lambda_inv(s, 100, lam, 8.0) for s in range(101)]
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(s == pytest.approx(steps[0]) for s in steps)  # linear
    assert lambda_inv(0, 0, lam, 8.0) == pytest.approx(1 / lam)  # no warm-up


def test_teacher_momentum__cosine_from_base_to_one():
    assert teacher_momentum(0, 1000, 0.996) == pytest.approx(0.996)
    assert teacher_momentum(500, 1000, 0.996) == pytest.approx(0.998)
    assert teacher_momentum(1000, 1000, 0.996) == pytest.approx(1.0)
    values = [teacher_momentum(s, 1000, 0.996) for s in range(1001)]
    assert values == sorted(values)
    assert teacher_momentum(300, 1000, 0.0) == 0.0  # weight sharing stays shared


def test_learning_rate__warmup_then_cosine_to_zero():
    assert learning_rate(0, 100, 10, 1.0) == 0.0
    assert learning_rate(5, 100, 10, 1.0) == pytest.approx(0.5)
    assert learning_rate(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert learning_rate(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert learning_rate(100, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)
