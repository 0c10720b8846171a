// Reading plans/seq-<N>.json: the listing of a package's plans and matching one to the graph's
// buffers by name, size and lifetime.
#include "model/package_plans.hpp"

#include <dirent.h>

#include <algorithm>
#include <charconv>
#include <unordered_map>

#include "core/json.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {

std::vector<int64_t> package_plan_seqs(const std::string& package_path) {
  std::vector<int64_t> seqs;
  DIR* dir = ::opendir((package_path + "/plans").c_str());
  if (dir == nullptr) return seqs;
  while (dirent* entry = ::readdir(dir)) {
    const std::string name = entry->d_name;
    if (name.rfind("seq-", 0) != 0 || name.size() <= 9 || name.substr(name.size() - 5) != ".json") {
      continue;
    }
    // N must be a number that fits: seq-99999999999999999999.json is not a plan of ours
    // (std::stoll would throw out_of_range through Model::load).
    const std::string digits = name.substr(4, name.size() - 9);
    if (digits.find_first_not_of("0123456789") != std::string::npos) continue;
    int64_t seq = 0;
    const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), seq);
    if (error != std::errc() || end != digits.data() + digits.size()) continue;
    seqs.push_back(seq);
  }
  ::closedir(dir);
  std::sort(seqs.begin(), seqs.end());
  return seqs;
}

bool package_plan_apply(const std::string& path, std::vector<MemoryBuffer>& buffers,
                        uint64_t alignment, std::string& why) {
  const Json plan = json_parse_file(path);
  struct Entry {
    uint64_t offset = 0;
    uint64_t size = 0;  // 0: not given
    int64_t first = -1;
    int64_t last = -1;
  };
  std::unordered_map<std::string, Entry> by_name;
  auto number = [&](const Json& b, const char* key, int64_t fallback) {
    const Json* v = b.find(key);
    return v == nullptr || v->is_null() ? fallback : v->as_int(path + ": " + key);
  };
  if (const Json* list = plan.find("buffers"); list != nullptr && list->is_array()) {
    for (const Json& b : list->as_array(path)) {
      const Json* name = b.find("name");
      if (name == nullptr || b.find("offset") == nullptr) {
        why = "a buffer lacks name or offset";
        return false;
      }
      Entry e;
      e.offset = static_cast<uint64_t>(number(b, "offset", 0));
      e.size = static_cast<uint64_t>(number(b, "size", 0));
      e.first = number(b, "first", -1);
      e.last = number(b, "last", -1);
      by_name[name->as_string(path)] = e;
    }
  } else if (plan.find("names") && plan.find("offsets")) {
    const auto& names = plan.at("names", path).as_array(path);
    const auto& offsets = plan.at("offsets", path).as_array(path);
    if (names.size() != offsets.size()) {
      why = "names and offsets differ in length";
      return false;
    }
    for (size_t i = 0; i < names.size(); ++i) {
      by_name[names[i].as_string(path)].offset = static_cast<uint64_t>(offsets[i].as_int(path));
    }
  } else {
    why = "no \"buffers\" or \"names\"/\"offsets\"";
    return false;
  }
  if (by_name.size() != buffers.size()) {
    why = "it has " + std::to_string(by_name.size()) + " buffers, the graph " +
          std::to_string(buffers.size()) + "; plan again with `tierlm plan`";
    return false;
  }
  for (MemoryBuffer& b : buffers) {
    auto it = by_name.find(b.name);
    if (it == by_name.end()) {
      why = "it lacks buffer " + b.name + "; plan again with `tierlm plan`";
      return false;
    }
    const Entry& e = it->second;
    if ((e.size != 0 && e.size != b.size) || (e.first >= 0 && e.first != b.start) ||
        (e.last >= 0 && e.last != b.end)) {
      why = "buffer " + b.name + " has another size or lifetime; plan again with `tierlm plan`";
      return false;
    }
    if (e.offset % alignment != 0) {
      why = "buffer " + b.name + " is not " + std::to_string(alignment) + "-byte aligned";
      return false;
    }
    b.offset = e.offset;
  }
  return true;
}

std::string package_plan_path(const std::string& package_path, int64_t seq) {
  return package_path + "/plans/seq-" + std::to_string(seq) + ".json";
}

}  // namespace tierlm::detail
