#!/usr/bin/env bash
# The GPU check of the CUDA kernels in one go, for a session with an H200 (about 10 minutes):
# build the extension from source with the machine's python3 (torch, nvcc, scikit-build-core and
# pybind11 already there), run the GPU tests (`pytest -m cuda`) against that build, then the loss
# benchmark's GPU preset (forward + backward, K = 1 and K = 2, every provider checked against
# float64 first).
#
#   bash benchmarks/gpu_check.sh            # results under $OUT (device runs) or /tmp
#   HAIL_CUDA_ARCHS="80;90" bash benchmarks/gpu_check.sh
#
# Cut Cross-Entropy and Liger are timed when their wheels lie in .whl/ (ignored by git), fetched
# beforehand on a machine with a network and carried along to the device:
#   pip download --no-deps -d .whl cut-cross-entropy liger-kernel
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
out=${OUT:-/tmp/hail-gpu-check}
mkdir -p "$out"
work=$(mktemp -d)
export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export PYTHONUNBUFFERED=1
start=$SECONDS
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# 1. Build into a folder of its own, so that the tests import this build and not the checkout.
"$python" -m pip install -q --no-build-isolation --no-deps --no-index --target "$work/site" \
  -Cbuild-dir="$work/build" -Ccmake.define.HAIL_CUDA_ARCHS="${HAIL_CUDA_ARCHS:-90}" "$root" \
  2>&1 | tee "$out/build.log"
export PYTHONPATH="$work/site"
cd "$work"
"$python" - <<'PY'
import hail_ext, torch
info = hail_ext.build_info()
print("hail_ext from", hail_ext.__file__, info)
assert info.get("cuda"), "built without CUDA kernels"
assert torch.cuda.is_available(), "torch sees no GPU"
PY
echo "gpu_check: built in $((SECONDS - start)) s"

# 2. The GPU tests (every test marked `cuda`: test_cuda.py and the oracle tests' GPU half); a
#    skipped test here means something is missing, so show the reasons.
set +e
"$python" -m pytest -q -rs -m cuda -p no:cacheprovider -c "$root/pyproject.toml" \
  --rootdir "$root" "$root/python_tests" 2>&1 | tee "$out/test_cuda.log"
tests=${PIPESTATUS[0]}
set -e
echo "gpu_check: tests exited $tests after $((SECONDS - start)) s"

# 3. The loss benchmark's GPU preset (issue 6's goal points): the fused loss against the
#    reference, its compiled form, F.cross_entropy, Cut Cross-Entropy and Liger. The device has
#    no network: the two Triton losses come from wheels carried in .whl/ (see the header).
if compgen -G "$root/.whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-deps --no-index --target "$work/site" "$root"/.whl/*.whl || true
fi
"$python" "$root/benchmarks/loss_bench.py" --preset gpu --device cuda --out "$out/loss_gpu.csv" \
  2>&1 | tee "$out/bench.log" || true
"$python" "$root/benchmarks/loss_table.py" "$out/loss_gpu.csv" | tee "$out/loss_gpu.md" || true
echo "gpu_check: done in $((SECONDS - start)) s; logs, loss_gpu.csv and loss_gpu.md in $out"
exit "$tests"
