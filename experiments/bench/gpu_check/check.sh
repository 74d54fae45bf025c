#!/usr/bin/env bash
# selfsup on one NVIDIA GPU in one call: install (CUDA JAX), the GPU tests (tests/test_gpu.py), the
# CLI smoke on built-in data, the train-step benchmark, and a summary. Run from the repository root:
#   OUT=/some/dir bash experiments/bench/gpu_check/check.sh      # OUT defaults to ./gpu-check-out
# BUDGET_S (default 450) bounds the whole run: each stage's timeout is what is left. Every stage
# gets one row in stages.tsv: passed, failed, timed out, or skipped with the reason (no GPU, no
# time left, a dry run, every test skipped): a stage that did not run never reads as passed.
# README.md beside this file has the details.
set -uo pipefail

T0=$(date +%s)
BUDGET=${BUDGET_S:-450}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT:-$PWD/gpu-check-out}
WORK=${WORK:-/tmp/selfsup-gpu-check}
R50_BATCH=${R50_BATCH:-256}
DRY=${CHECK_DRY_RUN:-0}  # 1: runs nothing; every stage is reported skipped (tests this script).
rm -rf "$WORK/collect" "$WORK"/*.note  # Nothing of an earlier run reads as this one's.
mkdir -p "$OUT" "$WORK/collect"
export OUT WORK HERE
LOG=$OUT/check.log STAGES=$OUT/stages.tsv ENVF=$OUT/env.txt
: >"$LOG"
printf 'stage\tresult\tseconds\tnote\n' >"$STAGES"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off
export TF_CPP_MIN_LOG_LEVEL=1 R50_BATCH
export JAX_COMPILATION_CACHE_DIR=$WORK/jax-cache  # Later processes reuse earlier compiles.

elapsed() { echo $(($(date +%s) - T0)); }
left() { echo $((BUDGET - $(elapsed))); }
say() { echo "[$(elapsed)s] $*" | tee -a "$LOG"; }

# stage NAME MAX_S MIN_S CMD...: CMD under a timeout of min(MAX_S, time left - 15 s), skipped if
# that is under MIN_S or in a dry run. Output goes to check.log; stages.tsv gets NAME, result,
# seconds and a note. Exit code 0 is "passed", 5 (pytest's "no tests ran") "skipped".
stage() {
  local name=$1 max=$2 min=$3 t start rc result note=""
  shift 3
  t=$(($(left) - 15))
  ((t > max)) && t=$max
  ((DRY)) && { skip "$name" "dry run: $*"; return 99; }
  ((t < min)) && { skip "$name" "${t}s left for it, it needs ${min}s"; return 99; }
  say "=== $name (timeout ${t}s): $*"
  start=$(date +%s)
  timeout -k 10 "$t" "$@" >>"$LOG" 2>&1
  rc=$?
  case $rc in
    0) result=passed ;;
    5) result=skipped note="nothing ran (check.log has the reasons)" ;;
    124 | 137) result="timed out" note="after ${t}s" ;;
    *) result=failed note="exit code $rc" ;;
  esac
  [ -f "$WORK/$name.note" ] && note="$(cat "$WORK/$name.note")${note:+; $note}"
  printf '%s\t%s\t%s\t%s\n' "$name" "$result" "$(($(date +%s) - start))" "$note" >>"$STAGES"
  say "--- $name: $result${note:+ ($note)}"
  return $rc
}
skip() { say "SKIP $1: $2"; printf '%s\tskipped\t0\t%s\n' "$1" "$2" >>"$STAGES"; }

[ -f pyproject.toml ] && [ -d selfsup ] || { say "run me from the selfsup repository root"; exit 2; }

# ---- 1. The machine.
{
  echo "date: $(date -u)"; uname -a; echo "cores: $(nproc)"; free -g; df -h /tmp .
  nvidia-smi || echo "nvidia-smi failed"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  for p in python3.11 python3.12 python3.13 python3; do command -v "$p" >/dev/null && echo "$p: $("$p" --version 2>&1) at $(command -v "$p")"; done
  python3 -m pip --version; python3 -m pip config list
} >"$ENVF" 2>&1
say "machine: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1), $(nproc) cores"

# ---- 2. Install. With a package registry: a fresh venv on the machine's python3 if the project
# supports it (3.11-3.13), the project's dependencies with CUDA JAX in pyproject.toml's range
# (cuda13 wheels, else cuda12), then the project itself. Without one (an offline GPU image): the
# image's python3 (its own JAX/flax/optax/orbax/torch) plus wheels carried in .whl/ (without
# TensorFlow, the benchmark and the GPU tests still run; the CLI smoke needs it).
REGISTRY=0
if ((!DRY)) && timeout 40 python3 -m pip download --no-deps --no-cache-dir --retries 0 --timeout 8 \
  -q -d "$WORK/probe" ml-collections==1.1.0 >>"$LOG" 2>&1; then REGISTRY=1; fi
say "package registry reachable: $REGISTRY"

install_registry() {
  local base="" py extra
  for base in python3 python3.13 python3.12 python3.11; do  # The project's range: 3.11-3.13.
    rm -rf "$WORK/venv"
    command -v "$base" >/dev/null \
      && "$base" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' \
      && "$base" -m venv "$WORK/venv" && break
    base=""
  done
  [ -n "$base" ] || { echo "no python3 with venv"; return 1; }
  py=$WORK/venv/bin/python
  "$py" -m pip install -q --upgrade pip || true
  "$py" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    >"$WORK/requirements.txt" || return 1
  for extra in ${JAX_EXTRA:-cuda13 cuda12}; do
    # The requirements hold pyproject.toml's jax range; the extra adds the CUDA plugin.
    if "$py" -m pip install -q -r "$WORK/requirements.txt" "jax[$extra]" pytest; then
      echo "installed the dependencies with jax[$extra]"
      "$py" -m pip install -q --no-deps -e . || return 1
      return 0
    fi
  done
  return 1
}
install_local() {  # Wheels carried in the checkout's .whl/ or in this folder's wheels/.
  local wheels=()
  shopt -s nullglob
  wheels=(.whl/*.whl "$HERE"/wheels/*.whl)
  if ((${#wheels[@]})); then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "${wheels[@]}" || return 1
  fi
  python3 -c 'import jax, flax, optax, orbax.checkpoint, ml_collections, absl' # What must be there.
}
export -f install_registry install_local

INSTALL_RC=1
if ((REGISTRY)); then
  stage install 240 60 bash -c install_registry
  INSTALL_RC=$?
  PY=$WORK/venv/bin/python
fi
if ((INSTALL_RC)); then  # No registry, or its install failed: the machine's own python3.
  export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  stage install_local 60 5 bash -c install_local
  INSTALL_RC=$?
  PY=python3
fi
((DRY)) && PY=python3

TF_OK=0 TORCH_OK=0
((!DRY)) && "$PY" -c 'import tensorflow, tensorflow_datasets' >>"$LOG" 2>&1 && TF_OK=1
((!DRY)) && "$PY" -c 'import torch; assert torch.cuda.is_available()' >>"$LOG" 2>&1 && TORCH_OK=1
{ echo "--- after install (rc $INSTALL_RC): $PY, TensorFlow $TF_OK, CUDA torch $TORCH_OK"
  "$PY" -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda|flax|optax|orbax|tensorflow|torch|ml.collections|numpy|nvidia-cudnn|nvidia-cublas) '
} >>"$ENVF" 2>&1
say "python: $PY; TensorFlow: $TF_OK; CUDA torch: $TORCH_OK"
# PyTorch (several GB) downloads in the background while the GPU stages run; stage 6 installs it.
if ((REGISTRY && !TORCH_OK && !DRY)) && [ "$PY" != python3 ]; then
  (timeout 300 "$PY" -m pip download -q -d "$WORK/torch-wheels" "torch>=2.13,<2.14" \
    >"$WORK/torch-download.log" 2>&1; echo $? >"$WORK/torch-download.rc") &
fi

# ---- 3. JAX must see the GPU; from here on a failed CUDA start is an error, not a CPU fallback.
GPU_OK=0
stage gpu_backend 90 20 "$PY" -c \
  'import selfsup, jax; print(jax.__version__, jax.devices()); assert jax.default_backend() == "gpu"' \
  && GPU_OK=1
export JAX_PLATFORMS=cuda,cpu
if ((!GPU_OK)); then say "JAX does not see the GPU: the remaining stages would measure nothing"; fi

# ---- 4. The GPU tests: GPU code paths against references, bf16 dtypes, the probe's precision.
# pytest's summary line is the stage's note; every test skipped makes the stage "skipped".
gpu_tests() {
  "$PY" -m pytest tests/test_gpu.py -m gpu -o addopts= -p no:cacheprovider -q -rs \
    | tee "$WORK/gpu_tests.out"
  local rc=${PIPESTATUS[0]} summary
  summary=$(grep -E '^=* ?[0-9]+ (passed|failed|skipped|error)' "$WORK/gpu_tests.out" | tail -1 | tr -d '=')
  echo "${summary# }" >"$WORK/gpu_tests.note"
  ((rc == 0)) && ! grep -q passed <<<"$summary" && return 5
  return "$rc"
}
export -f gpu_tests
export PY
if ((GPU_OK)); then
  stage gpu_tests 240 45 bash -c gpu_tests
else
  skip gpu_tests "JAX does not see a GPU"
fi

# ---- 5. CLI smoke: SimCLR pretraining on builtin:shapes (60 steps, checkpoints, held-out eval).
collect() { [ -f "$WORK/$1/summary.json" ] && cp "$WORK/$1/summary.json" "$WORK/collect/$2.json"; }
SMOKE=(--config.data_dir="$WORK/tfds")
if ((GPU_OK && TF_OK)); then
  stage smoke_simclr 150 60 "$PY" -m selfsup pretrain --config=configs/simclr_builtin.py:runlocal \
    --workdir="$WORK/simclr" "${SMOKE[@]}"
  collect simclr simclr_pretrain
else
  skip smoke_simclr "needs the GPU and TensorFlow"
fi

# ---- 6. PyTorch for the benchmark's reference modes, if it is missing, downloaded, and time allows
# (no JAX process runs while pip may swap the venv's NVIDIA libraries).
if ((!TORCH_OK)); then
  if ((GPU_OK)) && [ "$(cat "$WORK/torch-download.rc" 2>/dev/null)" = 0 ] && (($(left) >= 270)); then
    stage install_torch 120 40 "$PY" -m pip install -q --no-index --find-links "$WORK/torch-wheels" \
      "torch>=2.13,<2.14" && "$PY" -c 'import torch; assert torch.cuda.is_available()' >>"$LOG" 2>&1 \
      && TORCH_OK=1
  else
    skip install_torch "torch not downloaded (no registry, or not finished) or too little time: JAX modes only"
  fi
else
  skip install_torch "CUDA torch is installed"
fi

# ---- 7. The train-step benchmark (every mode on the first GPU, as train_step.py pins them): ResNet-50
# at 224 px in bf16 and ResNet-18 CIFAR, minus the modes that are the same on a GPU (jax_no_reuse)
# or slow to build (torch_compile).
M50=jax_bf16 M18=jax,jax_bf16
((TORCH_OK)) && M50=$M50,torch_cl_bf16 M18=$M18,torch_cl,torch_cl_bf16
BENCH=(XLA_PYTHON_CLIENT_PREALLOCATE=false
  "$PY" experiments/bench/train_step.py --warmup=3 --repeats=5)
if ((!GPU_OK)); then
  skip bench_resnet50_224 "JAX does not see a GPU"
  skip bench_resnet18_cifar "JAX does not see a GPU"
else
  stage bench_resnet50_224 240 90 "${BENCH[@]}" --model=resnet50_224 --batch="$R50_BATCH" --steps=10 \
    --modes="$M50" --json="$OUT/bench_resnet50_224.json"
  stage bench_resnet18_cifar 180 60 "${BENCH[@]}" --model=resnet18_cifar --batch=256 --steps=20 \
    --modes="$M18" --json="$OUT/bench_resnet18_cifar.json"
fi

# ---- 8. More smoke while time lasts: relative patch (the small-map matmul paths) in bf16, killed
# at nothing but resumed from its step-30 checkpoint for 10 more steps; then the linear probe.
if ((GPU_OK && TF_OK)); then
  RP=("$PY" -m selfsup pretrain --config=configs/relpatch_builtin.py:runlocal --workdir="$WORK/relpatch"
    "${SMOKE[@]}" --config.model.dtype=bfloat16)
  if stage smoke_relpatch_bf16 120 50 "${RP[@]}" --config.total_steps=30; then
    stage smoke_relpatch_resume 90 40 "${RP[@]}" --config.total_steps=40 --allow_config_change
  else
    skip smoke_relpatch_resume "smoke_relpatch_bf16 did not pass"
  fi
  collect relpatch relpatch_bf16_resumed
  if [ -f "$WORK/simclr/summary.json" ]; then
    stage smoke_probe 120 50 "$PY" -m selfsup evaluate --config=configs/linear_probe.py:runlocal \
      --workdir="$WORK/probe" --config.checkpoint="$WORK/simclr"
    collect probe simclr_probe
  else
    skip smoke_probe "no SimCLR smoke checkpoint"
  fi
else
  for name in smoke_relpatch_bf16 smoke_relpatch_resume smoke_probe; do
    skip "$name" "needs the GPU and TensorFlow"
  done
fi

# ---- 9. Summary (no JAX): stage table, smoke numbers, the benchmark's MFU.
grep -q "Resuming from checkpoint at step 30" "$LOG" && echo '{"resumed_at_step_30": true}' >"$WORK/collect/resume_check.json"
python3 "$HERE/summary.py" "$OUT" "$WORK/collect" >>"$LOG" 2>&1 || say "summary.py failed"
say "done in $(elapsed)s; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
[ -f "$OUT/summary.md" ] && cat "$OUT/summary.md"
exit 0
