"""Where the installed native library, headers and CMake package are, for C++ embedding:
`cmake -Dtierlm_DIR=$(python -c "import tierlm; print(tierlm.cmake_dir())")` or
`tierlm info --cmake-dir`."""

import os

_ROOT = os.path.dirname(os.path.abspath(__file__))


def cmake_dir():
    """Directory of tierlmConfig.cmake (pass as tierlm_DIR to find_package(tierlm))."""
    return os.path.join(_ROOT, "lib", "cmake", "tierlm")


def include_dir():
    """Directory holding tierlm/*.hpp and tierlm/tierlm.h."""
    return os.path.join(_ROOT, "include")


def library_path():
    """Path of libtierlm.so."""
    return os.path.join(_ROOT, "libtierlm.so")
