#!/usr/bin/env bash
# Stability study, Omniglot part (issue 20): 5-way 1-shot (Lee & Choi's setup, conf/experiment/omniglot_5w1s.yaml)
# with maml, mtnet, tuv, tuv_bounded, kfo, metacurvature x 3 seeds, then every run scored on the same 600 test
# episodes at 10 test steps with plain and with backtracked steps. Run from the repository root:
#   METATUV_DATA_ROOT=../shared/data bash experiments/stability/omniglot.sh
#   python experiments/stability/summarize_omniglot.py          # -> omniglot.md, records_omniglot.json
# What ran (2026-11-30, 2 cores, 2 runs at a time on one thread each): STEPS=1000 META_BATCH=16. The paper's
# length: STEPS=40000 META_BATCH=32 (GPU-hours per run).
set -euo pipefail
SEEDS=${SEEDS:-0,1,2}
STEPS=${STEPS:-1000}
META_BATCH=${META_BATCH:-16}
PRESETS=${PRESETS:-maml,mtnet,tuv,tuv_bounded,kfo,metacurvature}
export OMP_NUM_THREADS=1 METATUV_JOBS=${METATUV_JOBS:-2} WANDB_MODE=${WANDB_MODE:-offline}
metatuv-train -m hydra/launcher=parallel experiment=omniglot_5w1s model="$PRESETS" seed="$SEEDS" \
  outer.steps="$STEPS" outer.meta_batch="$META_BATCH" inner.compile=false progress=false eval.baseline=false \
  logger=none monitor.eval_every=0 checkpoint.every=0 hydra.sweep.dir=experiments/stability/runs \
  'hydra.sweep.subdir=omniglot/5w1s/steps${outer.steps}/mb${outer.meta_batch}/${model.name}/seed${seed}' || true
# every run at 10 test steps (the config's), plain and backtracked (8 halvings), in two processes
python experiments/stability/evaluate_runs.py --glob "omniglot/5w1s/steps*/mb*/*/seed*" --steps 10 --shard 0/2 &
python experiments/stability/evaluate_runs.py --glob "omniglot/5w1s/steps*/mb*/*/seed*" --steps 10 --shard 1/2
wait
