// The one export macro: libtierlm is built with hidden symbols, and TIERLM_API marks what its
// public headers declare (classes and free functions), so only the public API is exported.
#pragma once

#define TIERLM_API __attribute__((visibility("default")))
