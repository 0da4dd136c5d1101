"""Sinusoid benchmark: task distribution, determinism, and a short meta-training run that clearly helps."""

import copy
import math

import pytest
import torch

from metatuv.data import Sinusoid
from metatuv.meta import MetaLearner, evaluate, meta_train, mse
from metatuv.nn import mlp


def test_sinusoid_shapes_ranges_and_determinism():
    bench = Sinusoid(shots=5, queries=7)
    xs, ys, xq, yq = next(bench.batches(3, seed=1))
    assert xs.shape == ys.shape == (3, 5, 1) and xq.shape == yq.shape == (3, 7, 1)
    assert xs.min() >= -5 and xs.max() <= 5 and ys.abs().max() <= 5
    again = next(bench.batches(3, seed=1))
    other = next(bench.batches(3, seed=2))
    assert all(torch.equal(a, b) for a, b in zip((xs, ys, xq, yq), again, strict=True))
    assert not torch.equal(xs, other[0])
    # support and query of one task lie on the same sine: A·sin(x − φ) is fitted exactly by its own amplitude
    big = next(Sinusoid(shots=2000, queries=10).batches(1, seed=3))
    amp = big[1].abs().max().item()
    assert 0.1 <= amp <= 5.0 and big[3].abs().max().item() <= amp + 1e-5


def test_sinusoid_rejects_zero_shots():
    with pytest.raises(ValueError, match="shots=0"):
        Sinusoid(shots=0)


def test_short_meta_training_beats_uninitialized_baseline():
    torch.manual_seed(0)
    bench = Sinusoid(shots=10, queries=10)
    model = mlp([1, 40, 40, 1])
    baseline = MetaLearner(copy.deepcopy(model), mse, lr=0.01, steps=1)
    learner = MetaLearner(model, mse, lr=0.01, steps=1)
    meta_train(learner, bench.batches(4, seed=0), steps=600, progress=False)
    trained = evaluate(learner, bench.batches(4, seed=99), tasks=200, steps=10, progress=False)
    base = evaluate(baseline, bench.batches(4, seed=99), tasks=200, steps=10, progress=False)
    assert math.isfinite(trained[0]) and math.isfinite(base[0])
    # clearly better: below half the baseline's MSE, and the CIs do not overlap
    assert trained[0] < 0.5 * base[0], (trained, base)
    assert trained[0] + trained[1] < base[0] - base[1], (trained, base)
