// Recursive-descent JSON parser (RFC 8259) with line/column errors, for package metadata.
#include "core/json.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "tierlm/core/error.hpp"

namespace tierlm::detail {

const char* json_type_name(JsonType type) {
  switch (type) {
    case JsonType::kJsonNull:
      return "null";
    case JsonType::kJsonBool:
      return "a boolean";
    case JsonType::kJsonNumber:
      return "a number";
    case JsonType::kJsonString:
      return "a string";
    case JsonType::kJsonArray:
      return "an array";
    case JsonType::kJsonObject:
      return "an object";
  }
  return "unknown";
}

Json Json::make_bool(bool value) {
  Json j;
  j.type_ = JsonType::kJsonBool;
  j.bool_ = value;
  return j;
}

Json Json::make_number(double value) {
  Json j;
  j.type_ = JsonType::kJsonNumber;
  j.number_ = value;
  return j;
}

Json Json::make_string(std::string value) {
  Json j;
  j.type_ = JsonType::kJsonString;
  j.string_ = std::move(value);
  return j;
}

Json Json::make_array(std::vector<Json> items) {
  Json j;
  j.type_ = JsonType::kJsonArray;
  j.array_ = std::move(items);
  return j;
}

Json Json::make_object(std::vector<std::pair<std::string, Json>> members) {
  Json j;
  j.type_ = JsonType::kJsonObject;
  j.object_ = std::move(members);
  return j;
}

namespace {

[[noreturn]] void wrong_type(const std::string& what, const char* expected, JsonType got) {
  TIERLM_FAIL(kErrorCorrupt, 0, what, ": expected ", expected, ", found ", json_type_name(got));
}

}  // namespace

bool Json::as_bool(const std::string& what) const {
  if (type_ != JsonType::kJsonBool) wrong_type(what, "a boolean", type_);
  return bool_;
}

double Json::as_number(const std::string& what) const {
  if (type_ != JsonType::kJsonNumber) wrong_type(what, "a number", type_);
  return number_;
}

int64_t Json::as_int(const std::string& what) const {
  if (type_ != JsonType::kJsonNumber) wrong_type(what, "an integer", type_);
  TIERLM_CHECK(std::nearbyint(number_) == number_ && std::fabs(number_) < 9.0e15, kErrorCorrupt,
               what, ": expected an integer, found ", number_);
  return static_cast<int64_t>(number_);
}

const std::string& Json::as_string(const std::string& what) const {
  if (type_ != JsonType::kJsonString) wrong_type(what, "a string", type_);
  return string_;
}

const std::vector<Json>& Json::as_array(const std::string& what) const {
  if (type_ != JsonType::kJsonArray) wrong_type(what, "an array", type_);
  return array_;
}

const std::vector<std::pair<std::string, Json>>& Json::as_object(const std::string& what) const {
  if (type_ != JsonType::kJsonObject) wrong_type(what, "an object", type_);
  return object_;
}

const Json* Json::find(std::string_view key) const {
  if (type_ != JsonType::kJsonObject) return nullptr;
  for (const auto& [name, value] : object_) {
    if (name == key) return &value;
  }
  return nullptr;
}

const Json& Json::at(std::string_view key, const std::string& what) const {
  if (type_ != JsonType::kJsonObject) wrong_type(what, "an object", type_);
  const Json* value = find(key);
  TIERLM_CHECK(value != nullptr, kErrorCorrupt, what, ": missing key \"", key, "\"");
  return *value;
}

namespace {

constexpr int kMaxDepth = 256;

class Parser {
 public:
  Parser(std::string_view text, const std::string& source) : text_(text), source_(source) {}

  Json parse_document() {
    skip_space();
    Json value = parse_value(0);
    skip_space();
    if (pos_ != text_.size()) fail("unexpected text after the JSON value");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    size_t line = 1, column = 1;
    for (size_t i = 0; i < pos_ && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    TIERLM_FAIL(kErrorCorrupt, 0, source_, ": invalid JSON at line ", line, ", column ", column,
                ": ", what);
  }

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }

  void expect_literal(std::string_view literal) {
    if (text_.substr(pos_, literal.size()) != literal) fail("unknown literal");
    pos_ += literal.size();
  }

  Json parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than 256 levels");
    if (pos_ >= text_.size()) fail("unexpected end of input");
    switch (text_[pos_]) {
      case '{':
        return parse_object(depth);
      case '[':
        return parse_array(depth);
      case '"':
        return Json::make_string(parse_string());
      case 't':
        expect_literal("true");
        return Json::make_bool(true);
      case 'f':
        expect_literal("false");
        return Json::make_bool(false);
      case 'n':
        expect_literal("null");
        return Json();
      default:
        return Json::make_number(parse_number());
    }
  }

  Json parse_object(int depth) {
    ++pos_;  // '{'
    std::vector<std::pair<std::string, Json>> members;
    skip_space();
    if (peek() == '}') {
      ++pos_;
      return Json::make_object(std::move(members));
    }
    for (;;) {
      skip_space();
      if (peek() != '"') fail("expected a string key");
      std::string key = parse_string();
      skip_space();
      if (peek() != ':') fail("expected ':' after an object key");
      ++pos_;
      skip_space();
      members.emplace_back(std::move(key), parse_value(depth + 1));
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == '}') {
        ++pos_;
        return Json::make_object(std::move(members));
      }
      fail("expected ',' or '}' in an object");
    }
  }

  Json parse_array(int depth) {
    ++pos_;  // '['
    std::vector<Json> items;
    skip_space();
    if (peek() == ']') {
      ++pos_;
      return Json::make_array(std::move(items));
    }
    for (;;) {
      skip_space();
      items.push_back(parse_value(depth + 1));
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == ']') {
        ++pos_;
        return Json::make_array(std::move(items));
      }
      fail("expected ',' or ']' in an array");
    }
  }

  unsigned parse_hex4() {
    if (pos_ + 4 > text_.size()) fail("truncated \\u escape");
    unsigned value = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_++];
      value <<= 4;
      if (c >= '0' && c <= '9') {
        value |= static_cast<unsigned>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        value |= static_cast<unsigned>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        value |= static_cast<unsigned>(c - 'A' + 10);
      } else {
        fail("bad hex digit in \\u escape");
      }
    }
    return value;
  }

  static void append_utf8(std::string& out, unsigned code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    for (;;) {
      if (pos_ >= text_.size()) fail("unterminated string");
      const char c = text_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= text_.size()) fail("unterminated escape");
      const char e = text_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out += e;
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          unsigned code = parse_hex4();
          if (code >= 0xD800 && code < 0xDC00) {
            if (text_.substr(pos_, 2) != "\\u") fail("unpaired surrogate");
            pos_ += 2;
            const unsigned low = parse_hex4();
            if (low < 0xDC00 || low >= 0xE000) fail("bad low surrogate");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, code);
          break;
        }
        default:
          fail("unknown escape");
      }
    }
  }

  double parse_number() {
    const size_t start = pos_;
    if (peek() == '-') ++pos_;
    if (!(peek() >= '0' && peek() <= '9')) fail("expected a value");
    if (peek() == '0') {
      ++pos_;
    } else {
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    if (peek() == '.') {
      ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) fail("expected digits after '.'");
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) fail("expected digits in the exponent");
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    // strtod on a bounded copy: the input is not NUL-terminated. Locale-independent because
    // the C locale's decimal point is '.', which libtierlm never changes.
    const std::string number(text_.substr(start, pos_ - start));
    errno = 0;
    const double value = std::strtod(number.c_str(), nullptr);
    return value;
  }

  std::string_view text_;
  const std::string& source_;
  size_t pos_ = 0;
};

}  // namespace

Json json_parse(std::string_view text, const std::string& source) {
  return Parser(text, source).parse_document();
}

Json json_parse_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    if (err == ENOENT) {
      TIERLM_FAIL(kErrorNotFound, err, path, ": not found (is this a tierlm package directory?)");
    }
    TIERLM_FAIL(kErrorIo, err, path, ": cannot open: ", errno_text(err));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return json_parse(text.str(), path);
}

}  // namespace tierlm::detail
