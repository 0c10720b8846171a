#include <gtest/gtest.h>

#include "core/json.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {
namespace {

TEST(Json, ParsesNestedValues) {
  const Json j = json_parse(
      R"({"a": [1, -2.5e3, true, false, null], "b": {"c": "x\"y\\n\u00e9\ud83d\ude00"}, "d": {}})",
      "t");
  const auto& a = j.at("a", "t").as_array("a");
  ASSERT_EQ(a.size(), 5u);
  EXPECT_EQ(a[0].as_int("a0"), 1);
  EXPECT_DOUBLE_EQ(a[1].as_number("a1"), -2500.0);
  EXPECT_TRUE(a[2].as_bool("a2"));
  EXPECT_FALSE(a[3].as_bool("a3"));
  EXPECT_TRUE(a[4].is_null());
  EXPECT_EQ(j.at("b", "t").at("c", "b").as_string("c"), "x\"y\\n\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT_TRUE(j.at("d", "t").as_object("d").empty());
  EXPECT_EQ(j.find("missing"), nullptr);
  // Keys keep file order.
  EXPECT_EQ(j.as_object("t")[1].first, "b");
}

TEST(Json, LargeIntegersAndTypes) {
  const Json j = json_parse("[4294967295, 8589934592, 1.5]", "t");
  EXPECT_EQ(j.as_array("t")[0].as_int("x"), 4294967295LL);
  EXPECT_EQ(j.as_array("t")[1].as_int("x"), 8589934592LL);
  EXPECT_THROW(j.as_array("t")[2].as_int("x"), Error);
  EXPECT_THROW(j.as_string("t"), Error);
}

TEST(Json, ErrorsNameSourceLineAndColumn) {
  const char* bad[] = {"{\"a\": 1,}", "[1 2]", "{\"a\" 1}", "\"open", "tru",
                       "01",          "1.",    "",          "[1] x",  "{\"a\": \"\x01\"}",
                       "\"\\q\""};
  for (const char* text : bad) {
    try {
      json_parse(text, "file.json");
      FAIL() << "accepted " << text;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kErrorCorrupt);
      EXPECT_NE(std::string(e.what()).find("file.json: invalid JSON at line 1"), std::string::npos)
          << e.what();
    }
  }
  try {
    json_parse("{\n  \"a\": [1,\n  ]\n}", "f");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 3, column 3"), std::string::npos) << e.what();
  }
}

TEST(Json, MissingKeyIsCorrupt) {
  const Json j = json_parse("{\"a\": 1}", "t");
  try {
    j.at("b", "manifest.json: config");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorCorrupt);
    EXPECT_NE(std::string(e.what()).find("manifest.json: config: missing key \"b\""),
              std::string::npos);
  }
}

TEST(Json, DeepNestingIsRefusedNotACrash) {
  std::string deep(100000, '[');
  EXPECT_THROW(json_parse(deep, "deep"), Error);
}

}  // namespace
}  // namespace tierlm::detail
