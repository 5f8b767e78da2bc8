#!/usr/bin/env bash
# The GPU check of the CUDA kernels in one go, for a session with an H200 (about 8 minutes):
# build the extension from source with the machine's python3 (torch, nvcc, scikit-build-core and
# pybind11 already there), run python_tests/test_cuda.py against that build, then time the fused
# loss against the pure-PyTorch reference (forward + backward) for K = 1 and K = 2.
#
#   bash benchmarks/gpu_check.sh            # results under $OUT (device runs) or /tmp
#   HAIL_CUDA_ARCHS="80;90" bash benchmarks/gpu_check.sh
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

# 2. The GPU tests; a skipped test here means something is missing, so show the reasons.
set +e
"$python" -m pytest -q -rs -p no:cacheprovider -c "$root/pyproject.toml" --rootdir "$root" \
  "$root/python_tests/test_cuda.py" 2>&1 | tee "$out/test_cuda.log"
tests=${PIPESTATUS[0]}
set -e
echo "gpu_check: tests exited $tests after $((SECONDS - start)) s"

# 3. Timing: median of timed forward+backward calls after warm-up, and peak memory over inputs.
"$python" - "$out/timing.csv" <<'PY'
import csv, sys, torch
import hail_ext

CASES = [  # K, N, d, V, dtype
    (1, 4096, 64, 100_000, torch.float32),
    (1, 16384, 2048, 256_000, torch.bfloat16),
    (1, 32768, 64, 1_000_000, torch.bfloat16),
    (2, 4096, 64, 300_000, torch.float32),
    (2, 4096, 64, 300_000, torch.bfloat16),
    (2, 16384, 256, 100_000, torch.bfloat16),
]

def run(fn, K, N, d, V, dtype, reps=10):
    g = torch.Generator(device="cuda").manual_seed(0)
    h = (torch.randn(K, N, d, device="cuda", generator=g) / d**0.25).to(dtype).requires_grad_()
    w = (torch.randn(V, d, device="cuda", generator=g) / d**0.25).to(dtype).requires_grad_()
    t = torch.randint(0, V, (N,), device="cuda", generator=g)
    def step():
        h.grad = w.grad = None
        loss = fn(h, w, t)
        loss.backward()
        return loss
    step(); step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); loss = step(); b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return sorted(times)[len(times) // 2], peak, float(loss)

rows = []
print(f"{'K':>2} {'N':>6} {'d':>5} {'V':>8} {'dtype':>9} {'provider':>9} {'ms':>9} {'MB':>8}")
for K, N, d, V, dtype in CASES:
    for name, fn in (("fused", hail_ext.med_loss), ("reference", hail_ext.reference.med_loss)):
        try:
            ms, mb, loss = run(fn, K, N, d, V, dtype, reps=10 if name == "fused" else 3)
        except torch.OutOfMemoryError:
            ms = mb = loss = float("nan")
        torch.cuda.empty_cache()
        name_dt = str(dtype).removeprefix("torch.")
        print(f"{K:>2} {N:>6} {d:>5} {V:>8} {name_dt:>9} {name:>9} {ms:9.2f} {mb:8.0f}")
        rows.append(dict(K=K, N=N, d=d, V=V, dtype=name_dt, provider=name, ms=ms, peak_mb=mb,
                         loss=loss))
with open(sys.argv[1], "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
PY
echo "gpu_check: done in $((SECONDS - start)) s; logs and timing.csv in $out"
exit "$tests"
