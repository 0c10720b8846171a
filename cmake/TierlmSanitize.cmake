# TIERLM_SANITIZE builds libtierlm, the C++ tests and the Python module with GCC/Clang
# sanitizers: a comma list of address, undefined, thread (thread excludes address). Findings
# abort the run (UBSan does not recover), and the library is built at -O1 with line tables so the
# job stays fast and its reports name source lines. Empty (the default): no sanitizer, -O3.
set(TIERLM_SANITIZE "" CACHE STRING "Sanitizers to build with: address, undefined, thread (comma list), or empty")

set(TIERLM_OPTIMIZE -O3)
if(TIERLM_SANITIZE)
  string(REPLACE "," ";" tierlm_sanitizers "${TIERLM_SANITIZE}")
  foreach(sanitizer IN LISTS tierlm_sanitizers)
    if(NOT sanitizer MATCHES "^(address|undefined|thread)$")
      message(FATAL_ERROR "TIERLM_SANITIZE: unknown sanitizer '${sanitizer}' in '${TIERLM_SANITIZE}'; "
        "use a comma list of address, undefined, thread")
    endif()
  endforeach()
  if("thread" IN_LIST tierlm_sanitizers AND "address" IN_LIST tierlm_sanitizers)
    message(FATAL_ERROR "TIERLM_SANITIZE: thread and address cannot be combined; build them apart")
  endif()
  set(TIERLM_OPTIMIZE -O1)
  set(tierlm_sanitize_flags -fsanitize=${TIERLM_SANITIZE} -O1 -fno-omit-frame-pointer -g1)
  if("undefined" IN_LIST tierlm_sanitizers)
    list(APPEND tierlm_sanitize_flags -fno-sanitize-recover=all)
  endif()
  # Every C/C++ target of the build (library, tests, module); CUDA sources keep their flags.
  add_compile_options("$<$<COMPILE_LANGUAGE:C,CXX>:${tierlm_sanitize_flags}>")
  add_link_options(-fsanitize=${TIERLM_SANITIZE})
  message(STATUS "tierlm: sanitizers ${TIERLM_SANITIZE} (-O1)")
endif()
