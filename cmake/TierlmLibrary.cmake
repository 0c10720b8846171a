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

# The sources compile once, with hidden symbols: libtierlm (shared) exports only what the public
# headers mark TIERLM_API / TIERLM_C_API; the C++ tests, which also reach private headers, link
# the same objects as a static archive (tierlm_internal).
add_library(tierlm_objects OBJECT ${TIERLM_SOURCES})
set_target_properties(tierlm_objects PROPERTIES CXX_VISIBILITY_PRESET hidden
  CUDA_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
# The install include dir comes from install(TARGETS ... INCLUDES DESTINATION), which is
# tierlm/include inside a wheel; a fixed "include" here would name a missing directory.
target_include_directories(tierlm_objects PUBLIC
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/cpp/include>)
target_include_directories(tierlm_objects PRIVATE ${PROJECT_SOURCE_DIR}/cpp/src)
target_compile_options(tierlm_objects PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra ${TIERLM_OPTIMIZE}>)
target_compile_definitions(tierlm_objects PRIVATE TIERLM_VERSION="${PROJECT_VERSION}")
find_package(Threads REQUIRED)
set(TIERLM_LINK_PRIVATE "")
if(TIERLM_HAVE_IO_URING)
  target_include_directories(tierlm_objects PRIVATE ${URING_INCLUDE_DIR})
  list(APPEND TIERLM_LINK_PRIVATE ${URING_LIBRARY})
  target_compile_definitions(tierlm_objects PRIVATE TIERLM_HAVE_IO_URING=1)
endif()
if(TIERLM_HAVE_CUDA)
  # Static cudart loads libcuda lazily, so the library imports on machines without a GPU.
  target_link_libraries(tierlm_objects PRIVATE CUDA::cudart_static)
  list(APPEND TIERLM_LINK_PRIVATE CUDA::cudart_static)
  target_compile_definitions(tierlm_objects PRIVATE TIERLM_HAVE_CUDA=1)
endif()

add_library(tierlm SHARED $<TARGET_OBJECTS:tierlm_objects>)
add_library(tierlm::tierlm ALIAS tierlm)
target_include_directories(tierlm PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/cpp/include>)
target_link_libraries(tierlm PUBLIC Threads::Threads PRIVATE ${TIERLM_LINK_PRIVATE})

if(TIERLM_BUILD_TESTS OR TIERLM_BUILD_FUZZERS)
  add_library(tierlm_internal STATIC $<TARGET_OBJECTS:tierlm_objects>)
  target_include_directories(tierlm_internal PUBLIC
    ${PROJECT_SOURCE_DIR}/cpp/include ${PROJECT_SOURCE_DIR}/cpp/src)
  target_link_libraries(tierlm_internal PUBLIC Threads::Threads ${TIERLM_LINK_PRIVATE})
endif()
