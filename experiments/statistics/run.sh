#!/usr/bin/env bash
# T and V from statistics vs meta-learned vs MAML (issue 7). Run from the repository root:
#   bash experiments/statistics/run.sh && python experiments/statistics/summarize.py
# Each run writes experiments/statistics/runs/<benchmark>/<preset>-<metric>/results.json.
set -euo pipefail
common=(progress=false eval.baseline=false 'hydra.sweep.subdir=${model.name}-${metric.mode}')
# sinusoid 10-shot, the default budget (4000 meta-steps, meta-batch 4, 10 test steps, 600 test tasks)
sin=("${common[@]}" hydra.sweep.dir=experiments/statistics/runs/sinusoid)
metatuv-train -m model=tuv metric=learned,statistics,statistics_init "${sin[@]}"
metatuv-train -m model=maml "${sin[@]}"
# Omniglot 5-way 1-shot (vinyals split), conv4-64, 1000 meta-steps of meta-batch 4 (a 2-core CPU budget),
# alpha 0.4, 1 step at train, 3 at test, 600 test tasks
omni=("${common[@]}" benchmark=omniglot outer.steps=1000 outer.meta_batch=4
      hydra.sweep.dir=experiments/statistics/runs/omniglot)
metatuv-train -m model=tuv metric=learned,statistics,statistics_init "${omni[@]}"
metatuv-train -m model=maml "${omni[@]}"
