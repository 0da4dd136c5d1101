"""What a finished run writes: its scores, ``model.pt``, ``history.json`` and ``results.json`` (last), and how a
score reads (``score_text``; DIVERGED for a non-finite one, with ``DIVERGED_EXIT`` as the exit status)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from metatuv.files import save_torch, write_json
from metatuv.loggers import RunLogger
from metatuv.meta import format_score

DIVERGED_EXIT = 3  # exit status of a run whose meta-test (or baseline) score is not finite
WHO = {"test": "the meta-trained model", "baseline": "the baseline (un-meta-trained)"}


class Diverged(RuntimeError):
    """A multirun job whose meta-test or baseline score is not finite (its results.json says status: diverged)."""


def finite(x: float | None) -> float | None:
    """``x`` if it is a finite number, else None (strict JSON has no NaN)."""
    return x if x is not None and math.isfinite(x) else None


def score_text(metric: str, mean: float | None, ci95: float | None) -> str:
    """``format_score``, or DIVERGED for a score recorded as null (non-finite)."""
    return "DIVERGED (not finite)" if mean is None else format_score(metric, mean, ci95)


def summary_text(
    r: dict, benchmark: str, ways: int | None, shots: int, tasks: int, steps: int, backtrack: int = 0
) -> str:
    """The meta-test lines metatuv-train prints: the meta-trained score and the baseline's, over ``tasks`` tasks."""
    task = f"{ways}-way {shots}-shot" if ways is not None else f"{shots}-shot"
    how = f"{steps} inner steps" + (
        f", each halved up to {backtrack}x until the support loss does not rise" if backtrack else ""
    )
    lines = [f"meta-test {r['metric']} over {tasks} tasks ({benchmark} {task}, {how}, 95% CI):"]
    trained = f"{r['preset']}, meta-trained {r['meta_steps']} steps"
    lines.append(f"  {trained:<36} {score_text(r['metric'], r['test'], r['test_ci95'])}")
    if "baseline" in r:
        lines.append(
            f"  {'same net, un-meta-trained (baseline)':<36} "
            f"{score_text(r['metric'], r['baseline'], r['baseline_ci95'])}"
        )
    return "\n".join(lines)


def diverged_message(r: dict, results_json: Path) -> str:
    """metatuv-train's one line for a run whose meta-test (or baseline) score is not finite."""
    return (
        f"metatuv-train: DIVERGED: the meta-test {r['metric']} of {' and of '.join(WHO[k] for k in r['diverged'])} "
        "is not finite "
        f"(recorded as null, status diverged, in {results_json}); lower inner.lr or outer.lr, or "
        "use outer.clip."
    )


def finish(
    out_dir: Path,
    logger: RunLogger,
    results: dict,
    tested: dict[str, torch.nn.Module],
    test: Callable[[torch.nn.Module], tuple[float, float]],
    history: list[float],
    extra: dict,
) -> dict:
    """Score each of ``tested`` ({"test": learner, "baseline": …}) with ``test`` (mean, 95% CI; a non-finite score
    is recorded as null and the run as diverged), add ``extra`` (mask fractions, overrides, config) to ``results``,
    write model.pt (the "test" learner), history.json and results.json (last: its presence means the run's files
    are complete), and log the final scores."""
    for key, learner in tested.items():
        mean, ci = test(learner)
        results[key], results[f"{key}_ci95"] = finite(mean), finite(ci) if finite(mean) is not None else None
    diverged = [key for key in tested if results[key] is None]
    if diverged:
        results["status"], results["diverged"] = "diverged", diverged
    results |= extra
    save_torch(out_dir / "model.pt", tested["test"].state_dict())
    curve = {"step": list(range(len(history))), "loss": [finite(v) for v in history]}  # a skipped NaN: null
    write_json(out_dir / "history.json", curve, None)
    write_json(out_dir / "results.json", results)
    m = results["metric"]
    final = {f"{k}/{m}{s}": results[f"{k}{s}"] for k in tested for s in ("", "_ci95") if results[f"{k}{s}"] is not None}
    logger.log(final, results["meta_steps"])
    logger.summary({**final, "train_seconds": results["train_seconds"], "status": results["status"]})
    return results
