#!/usr/bin/env bash
# Omniglot (issue 10, study 5): 5-way 1-shot and 20-way 1-shot on the real data (Finn et al.'s protocol as in Lee &
# Choi's code: conf/experiment/omniglot_{5w1s,20w1s}.yaml) with maml, tnet, mtnet, tuv; 600 test episodes, 10 inner
# steps at meta-test. The paper trains 40,000 meta-steps; on 2 CPU cores we train what a session allows:
# STEPS_5W (default 2500, meta-batch 32) and STEPS_20W (default 1000, meta-batch 16). Run from the repository root:
#   METATUV_DATA_ROOT=../shared/data bash experiments/omniglot/run.sh
#   python experiments/omniglot/summarize.py        # results.md and the PNGs from experiments/omniglot/runs/
#   STEPS_5W=40000 STEPS_20W=40000 METATUV_JOBS=1 bash experiments/omniglot/run.sh    # the paper's length (GPU)
# Two runs at a time on one thread each (hydra/launcher=parallel). Rerunning resumes each run from its checkpoint.
# Extra arguments are Hydra overrides for every run, e.g. `bash experiments/omniglot/run.sh inner.compile=true`
# (the compiled meta-step; its Omniglot 5w1s speed on this CPU: experiments/benchmark/RESULTS.md).
set -euo pipefail
SEEDS=${SEEDS:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} METATUV_JOBS=${METATUV_JOBS:-2}
common=(model=maml,tnet,mtnet,tuv seed="$SEEDS" progress=false eval.baseline=false monitor.eval_every=0
  hydra.sweep.dir=experiments/omniglot/runs "$@")
metatuv-train -m hydra/launcher=parallel experiment=omniglot_5w1s outer.steps="${STEPS_5W:-2500}" "${common[@]}" \
  'hydra.sweep.subdir=5w1s/${model.name}/seed${seed}'
metatuv-train -m hydra/launcher=parallel experiment=omniglot_20w1s outer.steps="${STEPS_20W:-1000}" "${common[@]}" \
  'hydra.sweep.subdir=20w1s/${model.name}/seed${seed}'
