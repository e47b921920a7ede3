// The cuBLASLt entry points the CUDA backend uses, resolved from the shared library on first
// use instead of at program start. Linking libcublasLt directly runs its initializers in every
// tessera process, CPU-only ones included: ~60 ms and tens of MB of touched pages at each start
// (tessera --help took 0.17 s), paid again by each rank of a -tp/-pp job. These definitions take
// the header's declarations and forward to the library, loaded with dlopen when the CUDA backend
// creates its handle.
#include <cublasLt.h>
#include <dlfcn.h>

#include <mutex>
#include <string>

#include "core/status.h"

#ifndef TESSERA_CUBLASLT_SONAME
#define TESSERA_CUBLASLT_SONAME "libcublasLt.so"
#endif

namespace tessera {
namespace {

void* library() {
  static void* handle = nullptr;
  static std::string error;
  static std::once_flag once;
  std::call_once(once, [] {
    handle = dlopen(TESSERA_CUBLASLT_SONAME, RTLD_NOW | RTLD_LOCAL);
#ifdef TESSERA_CUBLASLT_PATH
    if (!handle) handle = dlopen(TESSERA_CUBLASLT_PATH, RTLD_NOW | RTLD_LOCAL);
#endif
    if (!handle) error = dlerror();
  });
  if (!handle)
    fail(ErrorKind::kUnavailable,
         "the CUDA backend needs cuBLASLt ({}), which could not be loaded: {} (install the CUDA "
         "toolkit's libcublas, or add its folder to LD_LIBRARY_PATH)",
         TESSERA_CUBLASLT_SONAME, error);
  return handle;
}

template <typename F>
F* resolve(const char* name) {
  void* p = dlsym(library(), name);
  if (!p)
    fail(ErrorKind::kUnavailable, "{} has no symbol {}: a cuBLASLt older than this build's",
         TESSERA_CUBLASLT_SONAME, name);
  return reinterpret_cast<F*>(p);
}

}  // namespace
}  // namespace tessera

// Each forwards to the library's own function of the same name and type.
#define TESSERA_LT_FORWARD(name, ...)                                \
  static auto* const fn = tessera::resolve<decltype(::name)>(#name); \
  return fn(__VA_ARGS__)

extern "C" {

cublasStatus_t CUBLASWINAPI cublasLtCreate(cublasLtHandle_t* light_handle) {
  TESSERA_LT_FORWARD(cublasLtCreate, light_handle);
}

cublasStatus_t CUBLASWINAPI cublasLtDestroy(cublasLtHandle_t light_handle) {
  TESSERA_LT_FORWARD(cublasLtDestroy, light_handle);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmul(
    cublasLtHandle_t light_handle, cublasLtMatmulDesc_t compute_desc, const void* alpha,
    const void* a, cublasLtMatrixLayout_t a_desc, const void* b, cublasLtMatrixLayout_t b_desc,
    const void* beta, const void* c, cublasLtMatrixLayout_t c_desc, void* d,
    cublasLtMatrixLayout_t d_desc, const cublasLtMatmulAlgo_t* algo, void* workspace,
    size_t workspace_bytes, cudaStream_t stream) {
  TESSERA_LT_FORWARD(cublasLtMatmul, light_handle, compute_desc, alpha, a, a_desc, b, b_desc, beta,
                     c, c_desc, d, d_desc, algo, workspace, workspace_bytes, stream);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoGetHeuristic(
    cublasLtHandle_t light_handle, cublasLtMatmulDesc_t operation_desc,
    cublasLtMatrixLayout_t a_desc, cublasLtMatrixLayout_t b_desc, cublasLtMatrixLayout_t c_desc,
    cublasLtMatrixLayout_t d_desc, cublasLtMatmulPreference_t preference, int requested,
    cublasLtMatmulHeuristicResult_t results[], int* returned) {
  TESSERA_LT_FORWARD(cublasLtMatmulAlgoGetHeuristic, light_handle, operation_desc, a_desc, b_desc,
                     c_desc, d_desc, preference, requested, results, returned);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc,
                                                     cublasComputeType_t compute_type,
                                                     cudaDataType_t scale_type) {
  TESSERA_LT_FORWARD(cublasLtMatmulDescCreate, desc, compute_type, scale_type);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  TESSERA_LT_FORWARD(cublasLtMatmulDescDestroy, desc);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                                           cublasLtMatmulDescAttributes_t attr,
                                                           const void* buf, size_t bytes) {
  TESSERA_LT_FORWARD(cublasLtMatmulDescSetAttribute, desc, attr, buf, bytes);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  TESSERA_LT_FORWARD(cublasLtMatmulPreferenceCreate, pref);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  TESSERA_LT_FORWARD(cublasLtMatmulPreferenceDestroy, pref);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceSetAttribute(
    cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
    size_t bytes) {
  TESSERA_LT_FORWARD(cublasLtMatmulPreferenceSetAttribute, pref, attr, buf, bytes);
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout,
                                                       cudaDataType type, uint64_t rows,
                                                       uint64_t cols, int64_t ld) {
  TESSERA_LT_FORWARD(cublasLtMatrixLayoutCreate, layout, type, rows, cols, ld);
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  TESSERA_LT_FORWARD(cublasLtMatrixLayoutDestroy, layout);
}

}  // extern "C"
