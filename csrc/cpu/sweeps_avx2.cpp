// The sweeps for x86-64 with AVX2 and FMA; compiled with -mavx2 -mfma and CPU_CAPABILITY=AVX2.
#include "sweeps_impl.h"

namespace hail_ext::cpu {
inline namespace CPU_CAPABILITY {
HAIL_DEFINE_SWEEP_TABLE(avx2_table, "avx2")
}  // namespace CPU_CAPABILITY

const SweepTable* sweep_table_avx2() { return &avx2_table_ref(); }
}  // namespace hail_ext::cpu
