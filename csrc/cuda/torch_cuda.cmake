# Included by the top-level CMakeLists.txt when the CUDA kernels are on, before find_package(Torch),
# whose CUDA part needs two hints to build the kernels as this project wants.

# 1. Torch's config compiles CUDA for TORCH_CUDA_ARCH_LIST and drops CMAKE_CUDA_ARCHITECTURES
#    (with a warning); left alone without a GPU it picks a long "common" list, sm_50 included,
#    which CUDA 13 rejects. Hand it HAIL_CUDA_ARCHS in its notation: "80;90a" -> "8.0;9.0a".
set(TORCH_CUDA_ARCH_LIST "")
foreach(arch IN LISTS HAIL_CUDA_ARCHS)
  if(NOT arch MATCHES "^[0-9]+[0-9][a-z]?$")
    message(FATAL_ERROR "HAIL_CUDA_ARCHS entries must look like 80, 90 or 90a, got '${arch}'")
  endif()
  string(REGEX REPLACE "^([0-9]+)([0-9])([a-z]?)$" "\\1.\\2\\3" torch_arch "${arch}")
  list(APPEND TORCH_CUDA_ARCH_LIST "${torch_arch}")
endforeach()
unset(CMAKE_CUDA_ARCHITECTURES)

# 2. Torch's config looks for the toolkit beside nvcc and links nvrtc; ATen's CUDA headers
#    include cuBLAS and cuSPARSE. A toolkit of only nvcc and cudart lacks them, but the nvidia-*
#    wheels that a CUDA build of torch installs carry them: use those when the toolkit has none.
get_filename_component(HAIL_CUDA_TOOLKIT "${CMAKE_CUDA_COMPILER}" DIRECTORY)
get_filename_component(HAIL_CUDA_TOOLKIT "${HAIL_CUDA_TOOLKIT}" DIRECTORY)
if(NOT DEFINED CUDA_TOOLKIT_ROOT_DIR)
  set(CUDA_TOOLKIT_ROOT_DIR "${HAIL_CUDA_TOOLKIT}")
endif()
set(HAIL_CUDA_WHEEL_INCLUDE "")
if(NOT EXISTS "${HAIL_CUDA_TOOLKIT}/include/cublas_v2.h")
  string(CONCAT HAIL_FIND_WHEELS
    "import glob, os, nvidia\n"
    "found = [h for d in nvidia.__path__ for h in glob.glob(d + '/*/include/cublas_v2.h')]\n"
    "print(os.path.dirname(os.path.dirname(sorted(found)[0])) if found else '')\n")
  execute_process(COMMAND "${Python_EXECUTABLE}" -c "${HAIL_FIND_WHEELS}"
    OUTPUT_VARIABLE HAIL_CUDA_WHEELS OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(HAIL_CUDA_WHEELS)
    message(STATUS "hail_ext: cuBLAS headers and nvrtc from the CUDA wheels in ${HAIL_CUDA_WHEELS}")
    set(HAIL_CUDA_WHEEL_INCLUDE "${HAIL_CUDA_WHEELS}/include")
    file(GLOB HAIL_NVRTC "${HAIL_CUDA_WHEELS}/lib/libnvrtc.so.*")
    list(FILTER HAIL_NVRTC EXCLUDE REGEX "builtins|alt")
    if(HAIL_NVRTC AND NOT CUDA_nvrtc_LIBRARY)
      list(GET HAIL_NVRTC 0 HAIL_NVRTC)
      set(CUDA_nvrtc_LIBRARY "${HAIL_NVRTC}" CACHE FILEPATH "nvrtc, from the CUDA wheels")
    endif()
  endif()
endif()
