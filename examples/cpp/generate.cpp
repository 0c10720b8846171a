// Loads a tierlm package and generates token ids with the C++ API.
// Usage: generate PACKAGE IDS [--max-new-tokens N] [--budget BYTES] [--temperature T]
//        [--top-k K] [--top-p P] [--seed S]
// IDS is comma-separated (1,2,3). Prints the generated ids, comma-separated, on one line.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <tierlm/core/error.hpp>
#include <tierlm/model/generate.hpp>
#include <tierlm/model/model.hpp>
#include <vector>

namespace {

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    if (!part.empty()) ids.push_back(static_cast<int32_t>(std::stol(part)));
  }
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s PACKAGE IDS [--max-new-tokens N] [--budget BYTES] ...\n",
                 argv[0]);
    return 2;
  }
  tierlm::ModelOptions model_options;
  tierlm::GenerateOptions options;
  for (int i = 3; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const char* value = argv[i + 1];
    if (flag == "--max-new-tokens") {
      options.max_new_tokens = std::atoll(value);
    } else if (flag == "--budget") {
      model_options.host_budget = std::strtoull(value, nullptr, 10);
    } else if (flag == "--temperature") {
      options.temperature = std::strtof(value, nullptr);
    } else if (flag == "--top-k") {
      options.top_k = std::atoll(value);
    } else if (flag == "--top-p") {
      options.top_p = std::strtof(value, nullptr);
    } else if (flag == "--seed") {
      options.seed = std::strtoull(value, nullptr, 10);
    } else {
      std::fprintf(stderr, "unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  try {
    tierlm::Model model = tierlm::Model::load(argv[1], model_options);
    const std::vector<int32_t> prompt = parse_ids(argv[2]);
    bool first = true;
    tierlm::generate(model, prompt, options, [&](int32_t token) {
      std::printf(first ? "%d" : ",%d", token);
      std::fflush(stdout);
      first = false;
      return true;
    });
    std::printf("\n");
  } catch (const tierlm::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
