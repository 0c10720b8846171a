# Fuzz harnesses, tests/fuzz/fuzz_<target>.cpp. With the tests: <target>_replay feeds every file
# of tests/fuzz/corpus/<target> (seeds and kept crashers) to the harness, any compiler, as a
# ctest case. With TIERLM_BUILD_FUZZERS (clang; tests/fuzz/run.sh sets it): fuzz_<target>
# linked with libFuzzer, the library instrumented through CMAKE_CXX_FLAGS by the script.
file(GLOB TIERLM_FUZZ_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_*.cpp)
foreach(src IN LISTS TIERLM_FUZZ_SOURCES)
  get_filename_component(name ${src} NAME_WE)
  string(REGEX REPLACE "^fuzz_" "" target ${name})
  if(TIERLM_BUILD_FUZZERS)
    set(exe ${name})
    add_executable(${exe} ${src})
    target_link_options(${exe} PRIVATE -fsanitize=fuzzer)
  else()
    set(exe ${name}_replay)
    add_executable(${exe} ${src} ${PROJECT_SOURCE_DIR}/tests/fuzz/replay_main.cpp)
    add_test(NAME fuzz_replay_${target}
             COMMAND ${exe} ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/${target})
  endif()
  target_link_libraries(${exe} PRIVATE tierlm_internal)
  target_include_directories(${exe} PRIVATE ${PROJECT_SOURCE_DIR}/cpp/src
                                            ${PROJECT_SOURCE_DIR}/tests/cpp)
endforeach()
