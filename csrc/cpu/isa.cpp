// Run-time choice of the sweeps' instruction set.
#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

#include "sweeps.h"

namespace hail_ext::cpu {

#ifndef HAIL_HAVE_AVX2
const SweepTable* sweep_table_avx2() { return nullptr; }
#endif
#ifndef HAIL_HAVE_AVX512
const SweepTable* sweep_table_avx512() { return nullptr; }
#endif

namespace {

bool cpu_has(const char* isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (std::string(isa) == "avx2") {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  if (std::string(isa) == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
#endif
  (void)isa;
  return false;
}

const SweepTable& choose() {
  const char* env = std::getenv("HAIL_CPU_ISA");
  const std::string wanted = env ? env : "avx512";
  TORCH_CHECK_VALUE(wanted == "default" || wanted == "avx2" || wanted == "avx512",
                    "HAIL_CPU_ISA must be default, avx2 or avx512, got '", wanted, "'");
  if (wanted == "avx512" && sweep_table_avx512() && cpu_has("avx512")) {
    return *sweep_table_avx512();
  }
  if (wanted != "default" && sweep_table_avx2() && cpu_has("avx2")) return *sweep_table_avx2();
  return sweep_table_default();
}

}  // namespace

const SweepTable& sweep_table() {
  static const SweepTable& table = choose();
  return table;
}

template <>
const SweepKernels<float>& sweep_kernels<float>() {
  return sweep_table().f32;
}

template <>
const SweepKernels<double>& sweep_kernels<double>() {
  return sweep_table().f64;
}

}  // namespace hail_ext::cpu
