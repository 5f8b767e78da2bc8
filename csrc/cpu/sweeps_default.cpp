// The sweeps for any CPU: at::vec falls back to plain loops the compiler may vectorise.
#include "sweeps_impl.h"

namespace hail_ext::cpu {
inline namespace CPU_CAPABILITY {
HAIL_DEFINE_SWEEP_TABLE(default_table, "default")
}  // namespace CPU_CAPABILITY

const SweepTable& sweep_table_default() { return default_table_ref(); }
}  // namespace hail_ext::cpu
