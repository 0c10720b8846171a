// What this build of libtierlm contains.
#pragma once

#include <string>

namespace tierlm {

struct BuildInfo {
  std::string version;
  bool cuda = false;
  bool io_uring = false;
  std::string compiler;
};

const BuildInfo& build_info();

}  // namespace tierlm
