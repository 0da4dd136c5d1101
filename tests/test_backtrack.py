"""The backtracking test-time step (metatuv/inner/backtrack.py) against hand-computed values and plain SGD."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

from metatuv.inner import adapt
from metatuv.inner.backtrack import adapt_backtracking, step_scale


def quadratic(A: torch.Tensor):
    return lambda f: 0.5 * f["w"] @ A @ f["w"]


def test_step_scale_by_hand():
    # L = θ², θ = 1, Δ = 1.5·2θ = 3: L(1 − 3) = 4 > 1 rejected, L(1 − 1.5) = 0.25 <= 1 accepted: s = 1/2
    loss = lambda f: (f["w"] ** 2).sum()  # noqa: E731
    fast = {"w": torch.tensor([1.0], dtype=torch.float64)}
    assert step_scale(loss, fast, {"w": torch.tensor([3.0], dtype=torch.float64)}, tries=4).item() == 0.5
    # Δ = 0.5: the full step already decreases L: s = 1
    assert step_scale(loss, fast, {"w": torch.tensor([0.5], dtype=torch.float64)}, tries=4).item() == 1.0
    # Δ = 100: needs ρʲ·100 <= 2, i.e. j >= 6; with 4 tries none qualifies: s = 0
    assert step_scale(loss, fast, {"w": torch.tensor([100.0], dtype=torch.float64)}, tries=4).item() == 0.0
    assert step_scale(loss, fast, {"w": torch.tensor([100.0], dtype=torch.float64)}, tries=8).item() == 2.0**-6


def test_a_nonfinite_step_leaves_the_parameters():
    loss = lambda f: (f["w"] ** 2).sum()  # noqa: E731
    fast = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    out = adapt_backtracking(loss, fast, 3, lambda k, g: {"w": g["w"] * math.inf})
    torch.testing.assert_close(out["w"], fast["w"], rtol=0, atol=0)


def test_equals_plain_sgd_when_every_full_step_descends():
    A = torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64))
    fast = {"w": torch.tensor([1.0, -1.0], dtype=torch.float64)}
    plain = adapt(quadratic(A), fast, 20, 0.3)  # α·λmax = 0.9 < 1: every full step lowers L
    safe = adapt_backtracking(quadratic(A), fast, 20, 0.3)
    torch.testing.assert_close(safe["w"], plain["w"].detach(), rtol=0, atol=1e-15)


def test_cannot_diverge_where_plain_sgd_does():
    A = torch.diag(torch.tensor([1.0, 50.0], dtype=torch.float64))  # α·λmax = 5 > 2: plain SGD blows up
    fast = {"w": torch.tensor([1.0, 1.0], dtype=torch.float64)}
    with torch.no_grad():
        plain = adapt(quadratic(A), fast, 50, 0.1)
    assert quadratic(A)(plain).item() > 1e20
    losses = [quadratic(A)(fast).item()]
    for _ in range(50):
        fast = adapt_backtracking(quadratic(A), fast, 1, 0.1)
        losses.append(quadratic(A)(fast).item())
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < 1e-3 * losses[0]  # and still converges


def test_vmap_over_tasks_equals_the_loop():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 40.0, 400.0], dtype=torch.float64)  # tasks of very different curvature

    def run(c: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
        loss = lambda f: 0.5 * c * (f["w"] ** 2).sum() + torch.sin(f["w"]).sum()  # noqa: E731
        return adapt_backtracking(loss, {"w": w0}, 10, 0.05)["w"]

    w0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    looped = torch.stack([run(c, w) for c, w in zip(scales, w0, strict=True)])
    torch.testing.assert_close(vmap(run)(scales, w0), looped, rtol=0, atol=1e-14)


def test_bad_arguments_fail_with_one_line():
    loss = lambda f: (f["w"] ** 2).sum()  # noqa: E731
    fast = {"w": torch.ones(1)}
    with pytest.raises(ValueError, match="tries=0"):
        step_scale(loss, fast, fast, tries=0)
    with pytest.raises(ValueError, match="steps=-1"):
        adapt_backtracking(loss, fast, -1, 0.1)


def _sinusoid_learner(vectorize: str, lr: float):
    from metatuv.meta import MetaLearner, get_preset
    from metatuv.meta.losses import mse
    from metatuv.nn import mlp

    torch.manual_seed(0)
    model = mlp([1, 40, 40, 1], True, True, False)
    return MetaLearner.from_preset(model, get_preset("tuv"), mse, lr, 1, vectorize=vectorize)


def _tasks(seed: int):
    from metatuv.data.sinusoid import Sinusoid

    return Sinusoid(10, 10).batches(5, seed, "cpu")


@pytest.mark.parametrize("vectorize", ["loop", "vmap"])
def test_evaluate_with_backtracking_stays_finite_where_plain_steps_blow_up(vectorize):
    from metatuv.meta.evaluation import evaluate

    learner = _sinusoid_learner(vectorize, lr=3.0)  # far too large: plain steps run away
    plain = evaluate(learner, _tasks(1), tasks=10, steps=50, progress=False, per_task=True)[2]
    safe = evaluate(learner, _tasks(1), tasks=10, steps=50, progress=False, per_task=True, backtrack=12)[2]
    zero = evaluate(learner, _tasks(1), tasks=10, steps=0, progress=False, per_task=True)[2]
    assert not torch.isfinite(plain).all() or plain.max() > 1e6
    assert torch.isfinite(safe).all() and safe.mean() < zero.mean()


def test_evaluate_backtracking_loop_equals_vmap_and_plain_when_steps_descend():
    from metatuv.meta.evaluation import evaluate

    loop = evaluate(_sinusoid_learner("loop", 0.01), _tasks(2), 10, 5, progress=False, per_task=True, backtrack=6)[2]
    vmap_ = evaluate(_sinusoid_learner("vmap", 0.01), _tasks(2), 10, 5, progress=False, per_task=True, backtrack=6)[2]
    torch.testing.assert_close(loop, vmap_, rtol=1e-5, atol=1e-6)
    plain = evaluate(_sinusoid_learner("vmap", 0.01), _tasks(2), 10, 5, progress=False, per_task=True)[2]
    torch.testing.assert_close(vmap_, plain, rtol=1e-5, atol=1e-6)  # α = 0.01: every full step descends


def _cfg(*overrides):
    from hydra import compose, initialize_config_dir

    from metatuv.train import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", ["device=cpu", *overrides])


@pytest.mark.parametrize("preset, key, expected", [("tuv", None, 0), ("tuv_bounded", None, 8), ("tuv", 12, 12)])
def test_model_backtrack_key_reaches_the_evaluation(preset, key, expected):
    from metatuv.build import build_learner
    from metatuv.meta.evaluation import evaluate

    extra = [] if key is None else [f"model.backtrack={key}"]
    setup, _, learner = build_learner(_cfg(f"model={preset}", "inner.lr=3.0", "model.max_step=30", *extra))
    assert learner.backtrack == expected
    scores = evaluate(learner, setup.test(), 10, 30, setup.metric, False, per_task=True)[2]
    plain = evaluate(learner, setup.test(), 10, 30, setup.metric, False, per_task=True, backtrack=0)[2]
    assert not torch.isfinite(plain).all() or plain.max() > 1e6  # α = 3 on sinusoid: plain steps run away
    if expected:
        assert torch.isfinite(scores).all() and scores.max() < 1e3
    else:
        torch.testing.assert_close(scores, plain, equal_nan=True)


def test_old_runs_keep_plain_steps_and_backtrack_may_change_on_resume(tmp_path):
    from metatuv.build import run_config
    from metatuv.runstate import check_same_run, upgrade_config

    saved = run_config(_cfg("model=tuv_bounded"))
    del saved["model"]["backtrack"]  # a run written before the key existed
    assert upgrade_config(saved)["model"]["backtrack"] == 0  # what it was evaluated with, not the preset's 8
    check_same_run(saved, run_config(_cfg("model=tuv_bounded", "model.backtrack=3")), tmp_path)  # no error


def test_metric_every_matters_for_resume_only_when_re_estimating(tmp_path):
    from metatuv.build import run_config
    from metatuv.runstate import check_same_run

    saved = run_config(_cfg("model=tuv", "metric=statistics_init"))
    saved["metric"]["every"] = 0  # what conf/metric/statistics_init.yaml held before the unused key was dropped
    check_same_run(saved, run_config(_cfg("model=tuv", "metric=statistics_init")), tmp_path)  # no error
    saved = run_config(_cfg("model=tuv", "metric=statistics"))
    with pytest.raises(ValueError, match="metric.every=7"):
        check_same_run(saved, run_config(_cfg("model=tuv", "metric=statistics", "metric.every=7")), tmp_path)


def test_metatuv_eval_backtrack_flag_writes_its_own_file(tmp_path, capsys):
    from metatuv.evaluate import main as eval_main
    from metatuv.train import run

    out = tmp_path / "run"
    run(_cfg("model=tuv", "debug=default"), out)
    eval_main([str(out), "--allow-few", "--tasks", "4", "--steps", "3", "--backtrack", "5", "--no-progress"])
    text = capsys.readouterr().out
    assert "3 inner steps (backtracked)" in text
    assert (out / "eval-test-3steps-backtrack5-4tasks.json").is_file()
    assert '"backtrack": 5' in (out / "eval-test-3steps-backtrack5-4tasks.json").read_text()


def test_default_tries_is_eight_halvings_and_zero_steps_return_the_input():
    loss = lambda f: (f["w"] ** 2).sum()  # noqa: E731
    fast = {"w": torch.tensor([1.0], dtype=torch.float64)}
    # Δ = 300: only ρ⁸·300 ≈ 1.17 <= 2 lowers L, the 9th candidate; the default 8 (ρ⁰ … ρ⁷) takes no step
    rule = lambda k, g: {"w": torch.full_like(g["w"], 300.0)}  # noqa: E731
    assert adapt_backtracking(loss, fast, 1, rule)["w"].item() == 1.0
    assert adapt_backtracking(loss, fast, 1, rule, tries=9)["w"].item() == 1.0 - 300.0 / 256
    torch.testing.assert_close(adapt_backtracking(loss, fast, 0, 0.1)["w"], fast["w"], rtol=0, atol=0)


def test_step_scale_edges_one_try_ties_and_bad_shrink():
    loss = lambda f: (f["w"] ** 2).sum()  # noqa: E731
    fast = {"w": torch.tensor([1.0], dtype=torch.float64)}
    # one try: the full step or none
    assert step_scale(loss, fast, {"w": torch.tensor([0.5], dtype=torch.float64)}, tries=1).item() == 1.0
    assert step_scale(loss, fast, {"w": torch.tensor([3.0], dtype=torch.float64)}, tries=1).item() == 0.0
    # a step that leaves the loss equal (θ = 1 → −1) is taken: "does not rise", not "falls"
    assert step_scale(loss, fast, {"w": torch.tensor([2.0], dtype=torch.float64)}, tries=4).item() == 1.0
    for shrink in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=f"shrink={shrink}"):
            step_scale(loss, fast, fast, tries=2, shrink=shrink)


def test_adapt_backtracking_passes_the_step_index_and_the_shrink_factor():
    loss = lambda f: (f["w"] ** 2).sum()  # noqa: E731
    fast = {"w": torch.tensor([1.0], dtype=torch.float64)}
    # a per-step rule (as LSLR's rates): Δ_k = (k + 1)·0.1·g; g = 2θ; every full step descends here
    out = adapt_backtracking(loss, fast, 2, lambda k, g: {"w": (k + 1) * 0.1 * g["w"]})
    assert out["w"].item() == pytest.approx((1 - 0.2) * (1 - 0.4))
    # Δ = 3 from θ = 1: shrink 0.25 takes s = 1/4 (θ = 0.25), the default 1/2 takes s = 1/2 (θ = −0.5)
    rule = lambda k, g: {"w": torch.full_like(g["w"], 3.0)}  # noqa: E731
    assert adapt_backtracking(loss, fast, 1, rule, shrink=0.25)["w"].item() == 0.25
    assert adapt_backtracking(loss, fast, 1, rule)["w"].item() == -0.5


def test_each_step_evaluates_the_loss_once_plus_once_per_try():
    """L(θ) comes with its gradient (grad_and_value): a step costs 1 + tries loss evaluations, not 2 + tries."""
    calls = []

    def loss_fn(f):
        calls.append(1)
        return ((f["w"] - 3.0) ** 2).sum()

    adapt_backtracking(loss_fn, {"w": torch.zeros(2, dtype=torch.float64)}, steps=3, lr=0.1, tries=4)
    assert len(calls) == 3 * (1 + 4)


def test_step_scale_is_exact_in_the_losss_dtype_for_any_shrink():
    """s = ρʲ in float64 for a float64 loss (0.3 is not a float32 number): Δ = 5 from θ = 1 on L = θ² needs
    ρʲ·5 <= 2, so j = 1 for ρ = 0.3."""
    loss = lambda f: (f["w"] ** 2).sum()  # noqa: E731
    fast = {"w": torch.tensor([1.0], dtype=torch.float64)}
    s = step_scale(loss, fast, {"w": torch.tensor([5.0], dtype=torch.float64)}, tries=4, shrink=0.3)
    assert s.dtype == torch.float64 and s.item() == 0.3
