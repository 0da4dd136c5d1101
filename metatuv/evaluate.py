"""metatuv-eval: evaluate a metatuv-train checkpoint on meta-test episodes with the test-time inner steps.

    metatuv-eval outputs/2026-11-28/12-00-00              # the run folder (or its checkpoint.pt)
    metatuv-eval RUN --tasks 2000 --steps 10 --split val  # more episodes, other step count, validation classes
    metatuv-eval RUN --episodes DIR                       # your own episodes: DIR/<episode>/{support,query}/<class>/
    metatuv-eval RUN --steps 50 --backtrack 8             # test-time steps that cannot diverge (inner/backtrack.py)

The network, benchmark and inner loop are rebuilt from the resolved config stored in the checkpoint; prints the
mean ± 95% CI and writes it to ``eval-<split>-<steps>steps[-backtrack<N>]-<tasks>tasks.json`` beside the
checkpoint (strict JSON, written atomically). A non-finite score is written as ``null`` with ``"status":
"diverged"``, and metatuv-eval exits with status 3 (``DIVERGED_EXIT``). With ``--episodes`` no dataset is read:
each episode folder's support images adapt the network with the run's test-time inner loop, its query images are
scored, and ``eval-episodes-<DIR name>-<path digest>-<steps>steps.json`` holds the accuracy of every episode.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
from pathlib import Path

from omegaconf import DictConfig

from metatuv.build import REGRESSION, TEST_SEED_OFFSET, build_learner
from metatuv.checkpoint import load_checkpoint, previous
from metatuv.data import IMAGE_BENCHMARKS, preprocessor, read_episodes
from metatuv.files import RunFileError, write_json
from metatuv.meta import accuracy as metric_accuracy
from metatuv.meta import evaluate
from metatuv.results import DIVERGED_EXIT, score_text
from metatuv.runstate import CHECKPOINT, stored_config

MIN_TASKS = 600  # the protocol of the papers we compare with; fewer only with --allow-few


def evaluate_checkpoint(
    path: Path,
    tasks: int = MIN_TASKS,
    steps: int | None = None,
    split: str = "test",
    seed: int | None = None,
    data_root: str | None = None,
    device: str | None = None,
    progress: bool = True,
    backtrack: int | None = None,
) -> dict:
    """Mean ± 95% CI of the checkpoint's model over ``tasks`` episodes of ``split`` after ``steps`` inner steps."""
    if split not in ("test", "val"):
        raise ValueError(f"split={split!r}; choose test or val.")
    state, path, cfg = _load(path, device, backtrack)
    if data_root is not None:
        cfg.paths.data_root = data_root
    if split == "val" and cfg.benchmark.name in REGRESSION:
        raise ValueError(f"split=val: {cfg.benchmark.name} has no class splits; use split=test (fresh tasks).")
    setup, preset, learner = build_learner(cfg, eval_split=split)
    learner.load_state_dict(state["learner"])
    steps = cfg.inner.test_steps if steps is None else steps
    seed = cfg.seed + TEST_SEED_OFFSET if seed is None else seed
    mean, ci = evaluate(learner, setup.test(), tasks, steps, setup.metric, progress, seed)
    finite = math.isfinite(mean) and math.isfinite(ci)
    result = {
        "status": "ok" if finite else "diverged",
        "checkpoint": str(path),
        "meta_step": state["step"],
        "benchmark": cfg.benchmark.name,
        "preset": preset.name,  # the preset, or a variant of it (metatuv.build.preset_of)
        "split": split,
        "metric": setup.metric_name,
        "tasks": tasks,
        "inner_steps": steps,
        "backtrack": learner.backtrack,
        "mean": mean if finite else None,  # strict JSON: a non-finite score is null
        "ci95": ci if finite else None,
    }
    out = path.with_name(f"eval-{split}-{steps}steps{_bt(learner.backtrack)}-{tasks}tasks.json")
    write_json(out, result)
    result["written"] = str(out)
    return result


def _bt(backtrack: int) -> str:
    """The result file's name part for backtracked test-time steps ("" for plain steps)."""
    return f"-backtrack{backtrack}" if backtrack else ""


def _load(path: Path, device: str | None, backtrack: int | None = None) -> tuple[dict, Path, DictConfig]:
    """The checkpoint's state, the file used, and its stored config (keys added since filled in; ``device`` and
    ``model.backtrack`` set when given)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file() and not previous(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass a metatuv-train output folder or its {CHECKPOINT}.")
    state, path = load_checkpoint(path)  # weights_only: a file that is not plain data is refused, never run
    cfg = stored_config(state["config"])
    if device is not None:
        cfg.device = device
    if backtrack is not None:
        cfg.model.backtrack = backtrack
    cfg.eval.baseline = False
    return state, path, cfg


def evaluate_episodes(
    path: Path,
    episodes: Path,
    steps: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    progress: bool = True,
    backtrack: int | None = None,
) -> dict:
    """Accuracy of the checkpoint's model on each episode folder under ``episodes`` (see metatuv.data.folders)
    after ``steps`` inner steps on its support set (default: the run's ``inner.test_steps``), their mean and 95% CI.

    Reads no dataset: the network is rebuilt from the checkpoint's config (``build_learner(load_data=False)``).
    """
    state, path, cfg = _load(path, device, backtrack)
    b = cfg.benchmark
    if b.name not in IMAGE_BENCHMARKS:
        raise ValueError(
            f"--episodes scores image classification; this run's benchmark is {b.name} (use --tasks instead)."
        )
    _, preset, learner = build_learner(cfg, load_data=False)
    try:
        learner.load_state_dict(state["learner"])
    except RuntimeError as e:  # torch's message spans lines: keep its first
        raise ValueError(
            f"{path}: its weights do not fit the network rebuilt from its config without data "
            f"({str(e).splitlines()[0]} …); evaluate it with --tasks (reads the dataset) instead."
        ) from None
    found = read_episodes(episodes, preprocessor(b.name, b.image_size), b.ways)
    if len(found) < 2:
        raise ValueError(
            f"episodes: {Path(episodes)} holds {len(found)} episode folder; a 95% CI needs at least 2 episodes."
        )
    steps = cfg.inner.test_steps if steps is None else steps
    seed = cfg.seed + TEST_SEED_OFFSET if seed is None else seed
    dtype = next(learner.parameters()).dtype
    batches = iter(
        [tuple(t.to(cfg.device, dtype) if t.is_floating_point() else t.to(cfg.device) for t in e.batch) for e in found]
    )
    mean, ci, scores = evaluate(learner, batches, len(found), steps, metric_accuracy, progress, seed, per_task=True)
    finite = math.isfinite(mean) and math.isfinite(ci)
    result = {
        "status": "ok" if finite else "diverged",
        "checkpoint": str(path),
        "meta_step": state["step"],
        "benchmark": b.name,
        "preset": preset.name,  # the preset, or a variant of it (metatuv.build.preset_of)
        "episodes_dir": str(Path(episodes).expanduser().resolve()),
        "metric": "accuracy",
        "episodes": len(found),
        "inner_steps": steps,
        "backtrack": learner.backtrack,
        "mean": mean if finite else None,  # strict JSON: a non-finite score is null
        "ci95": ci if finite else None,
        "per_episode": [
            {
                "episode": e.name,
                "accuracy": a if math.isfinite(a) else None,
                "classes": e.classes,
                "support": len(e.ys),
                "query": len(e.yq),
            }
            for e, a in zip(found, scores.tolist(), strict=True)
        ],
    }
    where = Path(episodes).expanduser().resolve()  # name + digest of the full path: two DIRs never share a file
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", where.name) or "episodes"
    digest = hashlib.sha256(str(where).encode()).hexdigest()[:8]
    out = path.with_name(f"eval-episodes-{label}-{digest}-{steps}steps{_bt(learner.backtrack)}.json")
    write_json(out, result)
    result["written"] = str(out)
    return result


def main(argv: list[str] | None = None) -> None:
    """Console script ``metatuv-eval``."""
    p = argparse.ArgumentParser(prog="metatuv-eval", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a metatuv-train output folder, or its checkpoint.pt")
    p.add_argument("--tasks", type=int, default=MIN_TASKS, help=f"meta-test episodes (default {MIN_TASKS})")
    p.add_argument("--steps", type=int, default=None, help="inner steps (default: the run's inner.test_steps)")
    p.add_argument(
        "--backtrack",
        type=int,
        default=None,
        help="halve each inner step up to N times until the support loss does not rise (0: plain steps; "
        "default: the run's model.backtrack)",
    )
    p.add_argument("--split", default="test", choices=["test", "val"], help="classes to draw episodes from")
    p.add_argument(
        "--episodes",
        type=Path,
        default=None,
        help="score episode folders DIR/<episode>/{support,query}/<class>/*.png instead (reads no dataset)",
    )
    p.add_argument("--seed", type=int, default=None, help="episode seed (default: the run's test stream)")
    p.add_argument("--data-root", default=None, help="override the run's paths.data_root")
    p.add_argument("--device", default=None, help="override the run's device (cpu, cuda)")
    p.add_argument("--allow-few", action="store_true", help=f"allow --tasks below {MIN_TASKS} (smoke tests)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.steps is not None and a.steps < 0:
        p.error(f"--steps={a.steps} must be >= 0.")
    if a.backtrack is not None and a.backtrack < 0:
        p.error(f"--backtrack={a.backtrack} must be >= 0 (0: plain inner steps).")
    if a.episodes is not None:
        if a.split != "test" or a.tasks != MIN_TASKS or a.data_root is not None:
            p.error("--episodes takes its tasks from DIR; drop --split, --tasks and --data-root.")
        try:
            r = evaluate_episodes(a.checkpoint, a.episodes, a.steps, a.seed, a.device, not a.no_progress, a.backtrack)
        except (FileNotFoundError, ValueError, RunFileError) as e:
            raise SystemExit(f"metatuv-eval: {e}") from None
        what = f"{r['benchmark']}: accuracy over the {r['episodes']} episodes of {r['episodes_dir']}"
        return _report(r, what, "accuracy")
    if a.tasks < MIN_TASKS and not a.allow_few:
        p.error(
            f"--tasks={a.tasks} is below {MIN_TASKS}, too few for a 95% CI to compare with papers; add --allow-few."
        )
    if a.tasks < 2:
        p.error(f"--tasks={a.tasks} must be >= 2 (a 95% CI needs two tasks).")
    if a.steps is not None and a.steps < 0:
        p.error(f"--steps={a.steps} must be >= 0.")
    try:
        r = evaluate_checkpoint(
            a.checkpoint, a.tasks, a.steps, a.split, a.seed, a.data_root, a.device, not a.no_progress, a.backtrack
        )
    except (FileNotFoundError, ValueError, RunFileError) as e:  # CheckpointError is a ValueError
        raise SystemExit(f"metatuv-eval: {e}") from None
    _report(r, f"{r['benchmark']} {r['split']}: {r['metric']} over {r['tasks']} tasks", r["metric"])


def _report(r: dict, what: str, metric: str) -> None:
    """The summary line and the file written; a diverged score exits with DIVERGED_EXIT after saying so."""
    print(
        f"{r['preset']} at meta-step {r['meta_step']}, {what}, {r['inner_steps']} inner steps"
        f"{' (backtracked)' if r['backtrack'] else ''}: "
        f"{score_text(metric, r['mean'], r['ci95'])} (95% CI)"
    )
    print(f"written to {r['written']}")
    if r["status"] == "diverged":
        print(f"metatuv-eval: DIVERGED: the score is not finite (null in {r['written']})", file=sys.stderr)
        raise SystemExit(DIVERGED_EXIT)


if __name__ == "__main__":
    main()
