// The Python module hail_ext._C: loading it registers the operators; it also tells how it was
// built.
#include <pybind11/pybind11.h>

#include <string>

#include "cpu/bf16_products.h"
#include "cpu/sweeps.h"

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict info;
  info["version"] = HAIL_VERSION;
  info["torch_version"] = HAIL_TORCH_VERSION;
#ifdef HAIL_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = HAIL_CUDA_ARCHS;
#else
  info["cuda"] = false;
  info["cuda_archs"] = "";
#endif
  info["cpu_isa"] = hail_ext::cpu::sweep_table().isa;
  py::list compiled;
  compiled.append("default");
  if (hail_ext::cpu::sweep_table_avx2()) compiled.append("avx2");
  if (hail_ext::cpu::sweep_table_avx512()) compiled.append("avx512");
  info["cpu_isas_compiled"] = compiled;
  info["cpu_bf16_products"] = hail_ext::cpu::Bf16Products::usable();
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "hail_ext's compiled operators (hail_ext::med_forward, hail_ext::med_backward)";
  m.def("build_info", &build_info, "How this extension was built and which CPU kernels it uses.");
}
