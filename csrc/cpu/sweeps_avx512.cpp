// The sweeps for x86-64 with AVX-512 (F, BW, VL, DQ); compiled with CPU_CAPABILITY=AVX512.
#include "sweeps_impl.h"

namespace hail_ext::cpu {
inline namespace CPU_CAPABILITY {
HAIL_DEFINE_SWEEP_TABLE(avx512_table, "avx512")
}  // namespace CPU_CAPABILITY

const SweepTable* sweep_table_avx512() { return &avx512_table_ref(); }
}  // namespace hail_ext::cpu
