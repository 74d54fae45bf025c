#!/usr/bin/env bash
# The train-step benchmark on one NVIDIA GPU, in one command (about 5 minutes once installed):
#   1. ResNet-50 at 224 px, SimCLR step in bf16 (JAX with model.dtype=bfloat16 next to PyTorch
#      channels_last + bf16 autocast), MFU against the GPU's dense bf16 peak;
#   2. ResNet-18 CIFAR stem, batch 256, against every PyTorch mode on the same GPU.
# Installs what is missing into the active Python environment first: the project, CUDA JAX and
# CUDA PyTorch (PyPI's Linux torch wheel is the CUDA build; a CPU-only torch is replaced by it).
#
#   bash experiments/bench/gpu.sh [OUTPUT_DIR]      # tables to stdout, JSON to OUTPUT_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench_gpu}
mkdir -p "$out"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import selfsup, ml_collections" 2>/dev/null || pip install -q -e .
python -c "import jax; assert jax.default_backend() == 'gpu'" 2>/dev/null \
  || pip install -q -e . "jax[cuda12]"  # CUDA JAX in the project's jax range.
if ! python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  pip uninstall -q -y torch 2>/dev/null || true  # A CPU build (2.13.0+cpu) satisfies the pin.
  pip install -q -e ".[bench]"
fi

# The modes' processes share the GPU: JAX allocates as it goes instead of taking 75%.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
bench="python experiments/bench/train_step.py --warmup=3 --repeats=5"
$bench --model=resnet50_224 --batch=128 --steps=10 --modes=jax_bf16,torch_cl_bf16 \
  --json="$out/resnet50_224.json"
$bench --model=resnet18_cifar --batch=256 --steps=20 --json="$out/resnet18_cifar.json"
