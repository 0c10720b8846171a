// libFuzzer target: a model package's manifest.json, graph.json and stored plan, opened,
// loaded (op resolution, placement, arena plan) and run for a few tokens. The input is the
// three texts separated by "\n---\n" (graph and plan optional); the weight file is always the
// tiny Llama of tests/cpp/tiny_package.hpp, so the seeds are that package's own texts.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_support.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/model/model.hpp"
#include "tierlm/model/package.hpp"
#include "tiny_package.hpp"

namespace {

constexpr std::string_view kSeparator = "\n---\n";

// The package folder: the tiny package's weights, written once per process.
const std::string& package_dir() {
  static const std::string dir =
      tierlm::testing::write_tiny_package(tierlm::fuzz::scratch_dir() + "/package");
  return dir;
}

std::vector<std::string_view> split(std::string_view text) {
  std::vector<std::string_view> parts;
  for (;;) {
    const size_t at = text.find(kSeparator);
    if (at == std::string_view::npos || parts.size() == 2) break;
    parts.push_back(text.substr(0, at));
    text.remove_prefix(at + kSeparator.size());
  }
  parts.push_back(text);
  return parts;
}

void run(const std::string& dir) {
  tierlm::Package package = tierlm::package_open(dir);
  tierlm::package_verify(package);
  tierlm::ModelOptions options;
  options.host_budget = uint64_t{64} << 20;
  options.threads = 1;
  options.max_context = 16;
  options.lock = false;
  tierlm::Model model = tierlm::Model::load(dir, options);
  const int32_t vocab = static_cast<int32_t>(model.vocab_size());
  const std::vector<int32_t> prompt = {1 % vocab, 2 % vocab, (vocab - 1)};
  model.forward(prompt);
  const int32_t next = vocab / 2;
  model.forward({&next, 1});
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = package_dir();
  const std::vector<std::string_view> parts = split(tierlm::fuzz::as_text(data, size));
  tierlm::fuzz::write_file(dir + "/manifest.json", parts[0]);
  std::filesystem::remove(dir + "/graph.json");
  std::filesystem::remove_all(dir + "/plans");
  if (parts.size() > 1) tierlm::fuzz::write_file(dir + "/graph.json", parts[1]);
  if (parts.size() > 2) {
    std::filesystem::create_directories(dir + "/plans");
    tierlm::fuzz::write_file(dir + "/plans/seq-8.json", parts[2]);
  }
  try {
    run(dir);
  } catch (const tierlm::Error&) {
  }
  return 0;
}
