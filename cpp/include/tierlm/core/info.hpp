// What this build of libtierlm contains.
#pragma once

#include <string>

#include "tierlm/core/export.hpp"

namespace tierlm {

struct TIERLM_API BuildInfo {
  std::string version;
  bool cuda = false;
  bool io_uring = false;
  std::string compiler;
};

TIERLM_API const BuildInfo& build_info();

}  // namespace tierlm
