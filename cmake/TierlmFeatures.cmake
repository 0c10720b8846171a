# Resolves the AUTO options into TIERLM_HAVE_CUDA / TIERLM_HAVE_IO_URING.
include(CheckLanguage)

set(TIERLM_HAVE_CUDA OFF)
if(NOT TIERLM_WITH_CUDA STREQUAL "OFF")
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(CMAKE_CUDA_ARCHITECTURES ${TIERLM_CUDA_ARCHITECTURES})
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(TIERLM_HAVE_CUDA ON)
  elseif(TIERLM_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "TIERLM_WITH_CUDA=ON but no CUDA compiler was found; install nvcc or set OFF")
  endif()
endif()

set(TIERLM_HAVE_IO_URING OFF)
if(NOT TIERLM_WITH_IO_URING STREQUAL "OFF")
  find_path(URING_INCLUDE_DIR liburing.h)
  # Static so the wheel carries no runtime dependency on liburing.so.
  find_library(URING_LIBRARY NAMES liburing.a uring)
  if(URING_INCLUDE_DIR AND URING_LIBRARY)
    set(TIERLM_HAVE_IO_URING ON)
  elseif(TIERLM_WITH_IO_URING STREQUAL "ON")
    message(FATAL_ERROR "TIERLM_WITH_IO_URING=ON but liburing was not found; apt-get install liburing-dev or set OFF")
  endif()
endif()

message(STATUS "tierlm: CUDA=${TIERLM_HAVE_CUDA} io_uring=${TIERLM_HAVE_IO_URING}")
