// A small JSON reader for manifest.json, graph.json and plans: no external dependency.
// Values are immutable after parsing; objects keep their keys in file order.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tierlm::detail {

enum class JsonType { kJsonNull, kJsonBool, kJsonNumber, kJsonString, kJsonArray, kJsonObject };

const char* json_type_name(JsonType type);

class Json {
 public:
  Json() = default;
  static Json make_bool(bool value);
  static Json make_number(double value);
  static Json make_string(std::string value);
  static Json make_array(std::vector<Json> items);
  static Json make_object(std::vector<std::pair<std::string, Json>> members);

  JsonType type() const { return type_; }
  bool is_null() const { return type_ == JsonType::kJsonNull; }
  bool is_number() const { return type_ == JsonType::kJsonNumber; }
  bool is_string() const { return type_ == JsonType::kJsonString; }
  bool is_array() const { return type_ == JsonType::kJsonArray; }
  bool is_object() const { return type_ == JsonType::kJsonObject; }
  bool is_bool() const { return type_ == JsonType::kJsonBool; }

  // Typed access; `what` names the value in the error (e.g. "manifest.json: config.hidden_size").
  bool as_bool(const std::string& what) const;
  double as_number(const std::string& what) const;
  // Integral numbers only (refuses 1.5 and values outside int64).
  int64_t as_int(const std::string& what) const;
  const std::string& as_string(const std::string& what) const;
  const std::vector<Json>& as_array(const std::string& what) const;
  const std::vector<std::pair<std::string, Json>>& as_object(const std::string& what) const;

  // Object member or nullptr when absent (or when this is not an object).
  const Json* find(std::string_view key) const;
  // Object member; throws kErrorCorrupt naming `what` and the key when absent.
  const Json& at(std::string_view key, const std::string& what) const;

 private:
  JsonType type_ = JsonType::kJsonNull;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<Json> array_;
  std::vector<std::pair<std::string, Json>> object_;
};

// Parses text; throws kErrorCorrupt naming `source`, the line and column on malformed input.
Json json_parse(std::string_view text, const std::string& source);
// Reads and parses a file (kErrorNotFound / kErrorIo when it cannot be read).
Json json_parse_file(const std::string& path);

}  // namespace tierlm::detail
