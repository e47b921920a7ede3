// cuBLASLt is opened on first use, not at start (src/kernels/cuda/cublaslt_lazy.cc): before any
// call the library is not in the process; a host-only call (descriptors need no GPU) then loads
// it and returns the library's own result.
#include <cublasLt.h>
#include <dlfcn.h>
#include <gtest/gtest.h>

namespace tessera {
namespace {

bool loaded() {
  void* h = dlopen(TESSERA_CUBLASLT_SONAME, RTLD_NOW | RTLD_NOLOAD);
  if (h) dlclose(h);
  return h != nullptr;
}

TEST(CublasLtLazy, OpensTheLibraryOnFirstUse) {
  EXPECT_FALSE(loaded()) << TESSERA_CUBLASLT_SONAME << " was loaded at start";
  cublasLtMatmulDesc_t desc = nullptr;
  ASSERT_EQ(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
  EXPECT_TRUE(loaded());
  const cublasOperation_t transpose = CUBLAS_OP_T;
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose,
                                           sizeof transpose),
            CUBLAS_STATUS_SUCCESS);
  // The library checks the size itself: a wrong one is its error, passed back unchanged.
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, 1),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasLtMatmulDescDestroy(desc), CUBLAS_STATUS_SUCCESS);
  cublasLtMatrixLayout_t layout = nullptr;
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&layout, CUDA_R_16BF, 64, 32, 64), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasLtMatrixLayoutDestroy(layout), CUBLAS_STATUS_SUCCESS);
}

}  // namespace
}  // namespace tessera
