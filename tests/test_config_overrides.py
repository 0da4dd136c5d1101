"""Config keys reach what they change after the redesign's seams (issue 19 review): preset fields overridden one at a
time, interpolated monitor cadence, the final logged loss with monitor.every=0, moved keys in old sweep folders, and
model.name without the group."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from metatuv.build import build_learner, preset_of
from metatuv.nn import TUVLayer
from metatuv.report import parse_overrides
from metatuv.train import CONF_DIR, run

REPO = Path(__file__).resolve().parents[1]


def cfg_of(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", ["device=cpu", *overrides])


def layers(learner):
    return [m for m in learner.model.modules() if isinstance(m, TUVLayer)]


@pytest.mark.parametrize(
    "base, field, check",
    [
        ("maml", "use_T", lambda L: all(m.T is not None for m in layers(L))),
        ("tnet", "use_V", lambda L: all(m.V is not None for m in layers(L))),
        ("tnet", "use_mask", lambda L: any(m.mask_logit is not None for m in layers(L))),
        ("maml", "curvature", lambda L: len(L.rule.curvature) > 0),
        ("maml", "kfo", lambda L: len(L.rule.kfo) > 0),
        ("maml", "head_only", lambda L: L.fast_names == ["4.weight", "4.bias"] or len(L.fast_names) == 2),
    ],
)
def test_each_preset_field_overridden_alone_reaches_the_learner(base, field, check):
    plain = build_learner(cfg_of(f"model={base}"), load_data=False)[2]
    varied = build_learner(cfg_of(f"model={base}", f"model.{field}=true"), load_data=False)[2]
    assert not check(plain) and check(varied)
    assert f"{field}=true" in preset_of(cfg_of(f"model={base}", f"model.{field}=true").model).name


def test_kfo_and_curvature_together_fail_before_training_with_one_line():
    with pytest.raises(ValueError, match="model.kfo=true and model.curvature=true"):
        preset_of(cfg_of("model=kfo", "model.curvature=true").model)


def test_interpolated_monitor_cadence_runs(tmp_path):
    r = run(cfg_of("debug=default", "logger=none", "monitor.every=${outer.steps}"), tmp_path)
    assert r["status"] == "ok"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "train/loss" in row] == [3]


def test_monitor_every_zero_logs_the_last_steps_loss(tmp_path):
    run(cfg_of("debug=default", "logger=none", "monitor.every=0"), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [row["train/loss"] for row in rows if "train/loss" in row]
    history = json.loads((tmp_path / "history.json").read_text())
    losses = history["loss"] if isinstance(history, dict) else history
    assert logged == [pytest.approx(losses[-1])]


def test_report_reads_a_moved_key_under_its_new_name():
    old = parse_overrides(["logger.eval_every=0", "model=tuv"], Path("x"))
    new = parse_overrides(["monitor.eval_every=0", "model=tuv"], Path("y"))
    assert old == new == {"monitor.eval_every": "0", "model": "tuv"}


def test_model_name_without_the_group_is_refused(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "metatuv.train", "debug=default", "model.name=maml", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 1, p.stdout + p.stderr
    assert "model.name=maml does not select a preset" in p.stdout + p.stderr and "use model=maml" in p.stdout + p.stderr
