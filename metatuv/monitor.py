"""What a run records while it trains: the train loss and the learned metric, validation scores, T/V pictures.

``monitor(...)`` returns the after-step hook of ``meta_train``; its cadence is a ``metatuv.schema.MonitorConfig``
(``monitor.*`` of the run config). ``wrap``, given to ``metatuv.train.run``, lets a caller wrap that hook (e.g.
experiments/logging/account.py times it) without patching this module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from metatuv.loggers import RunLogger
from metatuv.meta import MetaLearner, evaluate
from metatuv.metric.plots import save_factor_figures
from metatuv.metric.summary import factor_spectra, learned_metrics
from metatuv.schema import MonitorConfig

StepHook = Callable[[int, Callable[[], list[float]]], None]  # (0-based meta-step, the losses so far) -> None


def queue_figures(logger: RunLogger, model: torch.nn.Module, out_dir: Path, step: int) -> None:
    """T, V heatmaps and spectra PNGs, rendered on the logger's thread from a copy of ``model`` (training goes on)."""
    logger.figures(partial(save_factor_figures, copy.deepcopy(model), out_dir / "figures", step), step)


def validation(
    learner: MetaLearner, val: Callable, tasks: int, steps: int, metric: Callable, name: str, seed: int
) -> dict[str, float]:
    """{val/<name>, val/<name>_ci95}: mean ± 95% CI of ``metric`` over ``tasks`` fresh validation tasks."""
    mean, ci = evaluate(learner, val(), tasks, steps, metric, False, seed)
    return {f"val/{name}": mean, f"val/{name}_ci95": ci}


def monitor(
    cadence: MonitorConfig,
    setup,  # metatuv.build.Setup: model, metric, metric_name, val
    learner: MetaLearner,
    logger: RunLogger,
    out_dir: Path,
    steps: int,
    inner_lr: float,
    test_steps: int,
    seed: int,
) -> StepHook:
    """After-step hook: every ``cadence.every`` steps (and after the last of ``steps``) the train loss and learned
    metrics (spectra, condition numbers, masks), every ``cadence.eval_every`` a validation score over
    ``cadence.eval_tasks`` tasks (``test_steps`` inner steps), every ``cadence.images_every`` PNGs."""
    every, eval_every, eval_tasks, images_every = (
        cadence.every,
        cadence.eval_every,
        cadence.eval_tasks,
        cadence.images_every,
    )

    def due(done: int, n: int) -> bool:
        return n > 0 and done % n == 0

    def log(step: int, losses: Callable[[], list[float]]) -> None:
        done = step + 1
        if due(done, every) or done == steps:
            recent = losses()[-every:] if every > 0 else losses()[-1:]  # every=0: the last step's loss
            spectra = factor_spectra(setup.model)
            metrics = {"train/loss": sum(recent) / len(recent), **learned_metrics(setup.model, inner_lr, spectra)}
            if due(done, eval_every) and setup.val is not None:
                metrics |= validation(learner, setup.val, eval_tasks, test_steps, setup.metric, setup.metric_name, seed)
            logger.log(metrics, done)
            logger.histograms({f"{n or 'layer'}/{k}": v for n, d in spectra.items() for k, v in d.items()}, done)
        if due(done, images_every) and done != steps:
            queue_figures(logger, setup.model, out_dir, done)

    return log
