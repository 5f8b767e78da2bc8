#!/usr/bin/env bash
# Compiles the CUDA kernels on a machine without a GPU, so that no change breaks the GPU build
# unseen: a venv outside the repository with the CUDA 13.0 build of torch 2.14.1 (from this
# machine's package mirror; slow the first time, reused after), then a full build of the
# extension with CUDA on for HAIL_CUDA_ARCHS, then a check that the module loads and registered
# its CUDA kernels. Exits non-zero on any compile error.
#
#   HAIL_CUDA_VENV   the venv (default /tmp/hail-venv-cuda)
#   CUDACXX          nvcc (default /usr/local/cuda/bin/nvcc)
#   HAIL_CUDA_ARCHS  architectures (default "80;90")
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${HAIL_CUDA_VENV:-/tmp/hail-venv-cuda}
nvcc=${CUDACXX:-/usr/local/cuda/bin/nvcc}
archs=${HAIL_CUDA_ARCHS:-80;90}
torch_version=2.14.1
start=$SECONDS

if [ ! -x "$nvcc" ]; then
  echo "cuda_build: no nvcc at $nvcc (set CUDACXX)" >&2
  exit 1
fi

if ! "$venv/bin/python" -c "import sys, torch; sys.exit(not (torch.__version__.startswith('$torch_version') and torch.version.cuda))" 2>/dev/null; then
  echo "cuda_build: creating $venv with the CUDA build of torch $torch_version"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "torch==$torch_version" numpy scikit-build-core pybind11 ninja cmake
fi
echo "cuda_build: venv ready after $((SECONDS - start)) s"

# Build from the tree as it is, with the build directory outside it.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
CUDACXX=$nvcc CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
  "$venv/bin/pip" wheel --no-build-isolation --no-deps -q -w "$work/wheel" \
  -Cbuild-dir="$work/build" -Ccmake.define.HAIL_CUDA_ARCHS="$archs" "$root"
echo "cuda_build: compiled after $((SECONDS - start)) s"

# The module must load against this torch, report CUDA and hold a CUDA kernel for each operator;
# the CPU operator must still run. Loaded by path, so that hail_ext's Python dependencies are
# not needed here.
"$venv/bin/python" -m zipfile -e "$work"/wheel/*.whl "$work/unpacked"
"$venv/bin/python" - "$work"/unpacked/hail_ext/_C*.so <<'PY'
import importlib.util
import sys

import torch

spec = importlib.util.spec_from_file_location("_C", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
info = module.build_info()
print("cuda_build: build_info", info)
assert info["cuda"], "the extension was built without its CUDA kernels"
for op in ("hail_ext::med_forward", "hail_ext::med_backward"):
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, key), f"{op} lacks {key}"
hidden, weight = torch.randn(2, 5, 4), torch.randn(7, 4)
loss = torch.ops.hail_ext.med_forward(
    hidden, weight, torch.tensor([0, 1, 2, 3, -100]), None, None, -100, 0.5, 1.0, 0.0, 1, True
)[0]
assert torch.isfinite(loss), loss
PY
echo "cuda_build: passed in $((SECONDS - start)) s"
