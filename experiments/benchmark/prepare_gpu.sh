#!/usr/bin/env bash
# Prepare the GPU check HERE (the CPU machine, which reaches PyPI), for a lent machine that reaches nothing.
#
#   bash experiments/benchmark/prepare_gpu.sh                 # wheels for the lent machine (CPython 3.12)
#   bash experiments/benchmark/prepare_gpu.sh --python python3 # wheels for a local python (run_gpu.sh --smoke)
#
# Fills the git-ignored folder .gpu/ (or $GPU_DIR) with what the lent machine lacks (its python has torch 2.11,
# numpy, matplotlib, tqdm, pyyaml, pytest and little else; see /work/.library/device/KINDS.md):
#   .gpu/wheels/   higher, hydra-core, omegaconf, antlr4-python3-runtime (pure Python), and learn2learn with the
#                  pure-Python packages it imports (gym, gym-notices, qpth) when a wheel for the target python
#                  can be had: downloaded, else built here by that python itself; otherwise its row is skipped
#                  on the GPU with a line saying so;
#   .gpu/peerbench.py  ../shared/tools/peerbench.py (the reference figures' script; ../shared does not travel);
#   .gpu/data/omniglot the Omniglot zips and split lists for the end-to-end training step.
# Checks the folder stays well under the device tool's 64 MiB carry limit and prints the exact device call.
set -euo pipefail
cd "$(dirname "$0")/../.."
GPU_DIR=${GPU_DIR:-.gpu}
TARGET_PY=""  # empty: the lent machine (CPython 3.12, manylinux x86_64)
while [[ $# -gt 0 ]]; do
  case $1 in
    --python) TARGET_PY=$2; shift 2 ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    *) echo "prepare_gpu.sh: unknown argument $1 (use --python PY or nothing)" >&2; exit 2 ;;
  esac
done
LIMIT_MIB=48  # the device tool carries 64 MiB with the working tree; keep a margin
PIP=(python3 -m pip)
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }  # this machine's pip.conf
if [[ -z $TARGET_PY ]]; then
  PYVER=3.12
  PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  # A local CPython 3.12 (pyenv, python3.12) can build learn2learn's cp312 wheel (it has C extensions, no wheel).
  BUILD_PY=""
  for py in python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3; do
    if "$py" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then BUILD_PY=$py; break; fi
  done
else
  PYVER=$("$TARGET_PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  PLATFORMS=()
  BUILD_PY=$TARGET_PY
fi
WHEELS=$GPU_DIR/wheels
rm -rf "$WHEELS" && mkdir -p "$WHEELS"
say() { echo "[prepare_gpu] $*"; }

download() {  # download NAME==VERSION as a wheel for the target python, no dependencies (silent if none)
  "${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${PLATFORMS[@]}" -d "$WHEELS" "$1" >/dev/null 2>&1
}
build() {  # build NAME==VERSION into a wheel with BUILD_PY (sdist-only packages), no dependencies
  [[ -n $BUILD_PY ]] || return 1
  quiet "$BUILD_PY" -m pip wheel -q --no-deps "$@" -w "$WHEELS"
}

# Pure-Python needs of the GPU run, pinned as in requirements-dev.txt (hydra-core 1.3's own pins).
for spec in higher==0.2.1 hydra-core==1.3.2 omegaconf==2.3.0; do
  download "$spec" || build "$spec" || { say "could not fetch $spec"; exit 1; }
done
# antlr4 4.9.3 (omegaconf's pin) ships as an sdist only: build its pure-Python wheel with any python.
quiet "${PIP[@]}" wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w "$WHEELS"

# learn2learn 0.2.0: sdist only, with Cython extensions; needs its C sources regenerated on Python >= 3.11.
L2L=skipped
if [[ -n $BUILD_PY ]] && "$BUILD_PY" -c 'import sys; raise SystemExit(sys.version_info[:2] != tuple(map(int, "'"$PYVER"'".split("."))))'; then
  if build "learn2learn==0.2.0" --config-settings="--build-option=build_ext" >"$GPU_DIR/learn2learn-build.log" 2>&1; then
    # what `import learn2learn` needs beyond the lent machine's packages (torchvision, scipy, requests are there)
    for spec in gym==0.26.2 gym-notices==0.0.8 qpth==0.0.18; do download "$spec" || build "$spec"; done
    L2L=built
  else
    say "learn2learn 0.2.0 did not build for Python $PYVER (see $GPU_DIR/learn2learn-build.log): its rows are skipped"
  fi
else
  say "no CPython $PYVER here to build learn2learn 0.2.0 (no wheel on PyPI): its rows will be skipped on the GPU"
fi

# The peer benchmark and the data for the end-to-end step (../shared is not carried; copies are).
for f in peerbench.py graphprobe.py; do
  [[ -f ../shared/tools/$f ]] && cp ../shared/tools/$f "$GPU_DIR/" || say "../shared/tools/$f not found: skipped"
done
DATA=${METATUV_DATA_ROOT:-../shared/data}
if [[ -f $DATA/omniglot/images_background.zip ]]; then
  rm -rf "$GPU_DIR/data" && mkdir -p "$GPU_DIR/data/omniglot"
  cp "$DATA"/omniglot/images_*.zip "$GPU_DIR/data/omniglot/" && cp -r "$DATA/omniglot/splits" "$GPU_DIR/data/omniglot/"
else
  say "no Omniglot zips under $DATA/omniglot: the end-to-end training step will be skipped"
fi

say "wheels for CPython $PYVER (learn2learn: $L2L):"
ls -1 "$WHEELS" | sed 's/^/  /'
MIB=$(du -sm "$GPU_DIR" | cut -f1)
TREE=$(git ls-files -z | du -cm --files0-from=- | tail -n 1 | cut -f1)
say "$GPU_DIR is ${MIB} MiB, the tracked tree ${TREE} MiB (carry limit 64 MiB in all; this script allows $LIMIT_MIB)"
if ((MIB + TREE > LIMIT_MIB)); then
  say "too large to carry: remove something from $GPU_DIR"; exit 1
fi
[[ $(realpath "$GPU_DIR") != "$PWD"/* ]] || git check-ignore -q "$GPU_DIR" || { say "$GPU_DIR is not git-ignored: it would travel as untracked files"; exit 1; }
if [[ -z $TARGET_PY ]]; then
  cat <<EOF
[prepare_gpu] ready. In a session that is lent a machine, make this device call (tool 'device', verb 'run'):
  command:   bash experiments/benchmark/run_gpu.sh
  carry:     ["$GPU_DIR"]
  timeout_s: 590
Its files come back under the reply's files_at; copy them to experiments/benchmark/gpu-<date>/ and commit them.
EOF
else
  say "ready for: GPU_DIR=$GPU_DIR bash experiments/benchmark/run_gpu.sh --smoke"
fi
