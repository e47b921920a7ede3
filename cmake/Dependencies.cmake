# Every dependency comes from Debian packages (scripts/packages.txt lists them; scripts/setup.sh
# installs them).
find_package(Threads REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
find_package(prometheus-cpp REQUIRED)
if(TESSERA_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
if(TESSERA_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()

# ccache, when installed, makes rebuilds of unchanged files (other checkouts, CI reruns) cheap.
find_program(TESSERA_CCACHE ccache)
if(TESSERA_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_C_COMPILER_LAUNCHER ${TESSERA_CCACHE})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${TESSERA_CCACHE})
endif()

# MPI (Debian: libopenmpi-dev, openmpi-bin) for tensor and pipeline parallelism. Without it the
# build has only the single-rank communicator and `-tp 2` says that MPI is missing.
option(TESSERA_WITH_MPI "Build the MPI communicator when MPI is installed" ON)
set(TESSERA_HAVE_MPI OFF)
if(TESSERA_WITH_MPI)
  find_package(MPI COMPONENTS C)
  if(MPI_C_FOUND)
    set(TESSERA_HAVE_MPI ON)
    find_program(TESSERA_MPIEXEC NAMES mpirun mpiexec)
  else()
    message(STATUS "MPI not found: building without tensor/pipeline parallelism across ranks")
  endif()
endif()

# CUDA (docs/cuda.md): the toolkit's nvcc, cudart and cuBLASLt. AUTO builds the backend when
# nvcc is found; without it the build has the CPU backend only and `--device cuda` says why.
set(TESSERA_HAVE_CUDA OFF)
if(NOT TESSERA_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # Ampere (A100) and Hopper (H100/H200) machine code; other GPUs JIT the sm_90 PTX.
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80-real 90)
    endif()
    enable_language(CUDA)
    # C++17 for the .cu files (they include only launch.h, core/dtype.h and kernels/op_params.h):
    # Debian's nvcc 11.8 (deploy/docker/Dockerfile.cuda) has no C++20, nor does CMake 3.25 know
    # nvcc 12+'s.
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(TESSERA_HAVE_CUDA ON)
    if(TESSERA_CCACHE AND NOT CMAKE_CUDA_COMPILER_LAUNCHER)
      set(CMAKE_CUDA_COMPILER_LAUNCHER ${TESSERA_CCACHE})
    endif()
    message(STATUS "CUDA backend: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}")
  elseif(TESSERA_CUDA STREQUAL "ON")
    message(FATAL_ERROR "TESSERA_CUDA=ON but no CUDA compiler (nvcc) was found")
  else()
    message(STATUS "CUDA backend: off (no nvcc found)")
  endif()
endif()
