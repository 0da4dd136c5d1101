#!/usr/bin/env bash
# Subspace dimension (issue 10, study 3; Lee & Choi: the MT-net mask's on-fraction grows with task complexity):
# polynomial regression of order 0, 1, 2 (conf/experiment/polynomial_order*.yaml: 10-shot, alpha 0.001 as the
# authors' main.py, 60,000 meta-steps) with the masked presets mtnet and mtuv. Run from the repository root:
#   bash experiments/subspace/run.sh && python experiments/subspace/summarize.py
set -euo pipefail
SEEDS=${SEEDS:-0}
export OMP_NUM_THREADS=1 METATUV_JOBS=${METATUV_JOBS:-2}
metatuv-train -m hydra/launcher=parallel experiment=polynomial_order0,polynomial_order1,polynomial_order2 \
  model=mtnet,mtuv seed="$SEEDS" inner.compile=true progress=false eval.baseline=false monitor.eval_every=0 \
  hydra.sweep.dir=experiments/subspace/runs 'hydra.sweep.subdir=order${benchmark.order}/${model.name}/seed${seed}'
