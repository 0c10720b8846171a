// The budget edge every tier keeps (host and disk alike): three pages fit a budget of three
// pages exactly, and one byte more is refused with kErrorBudget naming the tier.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "tierlm/core/error.hpp"

namespace tierlm::testing {

template <class Tier>
void expect_budget_reached_then_refused(Tier& tier, const std::string& name) {
  auto a = tier.allocate(4096);
  auto b = tier.allocate(2 * 4096);
  EXPECT_EQ(tier.stats().current, 3u * 4096);
  EXPECT_EQ(tier.available(), 0u);
  try {
    tier.allocate(1);
    FAIL() << "allocation past the budget succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kErrorBudget);
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("budget"), std::string::npos) << e.what();
  }
}

}  // namespace tierlm::testing
