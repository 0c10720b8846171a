// Build facts baked in at compile time.
#include "tierlm/core/info.hpp"

namespace tierlm {

const BuildInfo& build_info() {
  static const BuildInfo kInfo = [] {
    BuildInfo info;
    info.version = TIERLM_VERSION;
#ifdef TIERLM_HAVE_CUDA
    info.cuda = true;
#endif
#ifdef TIERLM_HAVE_IO_URING
    info.io_uring = true;
#endif
    info.compiler = __VERSION__;
    return info;
  }();
  return kInfo;
}

}  // namespace tierlm
