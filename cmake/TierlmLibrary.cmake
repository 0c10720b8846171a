# libtierlm: every cpp/src source; files named *_avx2.cpp / *_avx512.cpp / *_avx512vnni.cpp
# get that ISA's flags only, and the dispatcher picks among them at run time (never
# -march=native).
file(GLOB_RECURSE TIERLM_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/cpp/src/*.cpp)
if(NOT TIERLM_HAVE_IO_URING)
  list(FILTER TIERLM_SOURCES EXCLUDE REGEX ".*_uring\\.cpp$")
endif()
if(TIERLM_HAVE_CUDA)
  file(GLOB TIERLM_CUDA_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/cuda/*.cu)
  list(APPEND TIERLM_SOURCES ${TIERLM_CUDA_SOURCES})
  # *_nocuda.cpp implement the same interfaces for builds without CUDA.
  list(FILTER TIERLM_SOURCES EXCLUDE REGEX ".*_nocuda\\.cpp$")
endif()

foreach(src IN LISTS TIERLM_SOURCES)
  if(src MATCHES "_avx2\\.cpp$")
    set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
  elseif(src MATCHES "_avx512\\.cpp$")
    set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS
      "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512bf16;-mfma;-mf16c")
  elseif(src MATCHES "_avx512vnni\\.cpp$")
    # Apart from _avx512: VNNI is not on every AVX-512 CPU (Skylake-X lacks it).
    set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS
      "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512vnni;-mfma;-mf16c")
  endif()
endforeach()

add_library(tierlm SHARED ${TIERLM_SOURCES})
add_library(tierlm::tierlm ALIAS tierlm)
# The install include dir comes from install(TARGETS ... INCLUDES DESTINATION), which is
# tierlm/include inside a wheel; a fixed "include" here would name a missing directory.
target_include_directories(tierlm PUBLIC
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/cpp/include>)
target_include_directories(tierlm PRIVATE ${PROJECT_SOURCE_DIR}/cpp/src)
target_compile_options(tierlm PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -O3>)
find_package(Threads REQUIRED)
target_link_libraries(tierlm PUBLIC Threads::Threads)
target_compile_definitions(tierlm PRIVATE TIERLM_VERSION="${PROJECT_VERSION}")
if(TIERLM_HAVE_IO_URING)
  target_include_directories(tierlm PRIVATE ${URING_INCLUDE_DIR})
  target_link_libraries(tierlm PRIVATE ${URING_LIBRARY})
  target_compile_definitions(tierlm PRIVATE TIERLM_HAVE_IO_URING=1)
endif()
if(TIERLM_HAVE_CUDA)
  # Static cudart loads libcuda lazily, so the library imports on machines without a GPU.
  target_link_libraries(tierlm PRIVATE CUDA::cudart_static)
  target_compile_definitions(tierlm PRIVATE TIERLM_HAVE_CUDA=1)
endif()
set_target_properties(tierlm PROPERTIES CXX_VISIBILITY_PRESET default)
