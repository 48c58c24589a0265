// SPDX-License-Identifier: BSL-1.0
// The test runner shared by every test executable. Besides running doctest it
// enforces, after every test case, two promises coropipe makes:
//  - no descriptor leaked: the set of open descriptors is what it was before;
//  - no child left behind: this process has no child at all, alive or zombie.
// The process is made a child subreaper, so orphaned grandchildren (a child's
// own children that outlived it) are re-parented here and counted too.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "support.hpp"

#include <sys/prctl.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

std::vector<std::string> violations;

class leak_listener : public doctest::IReporter {
public:
  explicit leak_listener(const doctest::ContextOptions&) {}

  void test_case_start(const doctest::TestCaseData& tc) override {
    name_ = tc.m_name;
    before_ = coropipe_test::open_fds();
  }

  void test_case_end(const doctest::CurrentTestCaseStats&) override {
    // A child that a test detached, or killed a moment ago, may take a little
    // while to be reaped; a leak is one that is still there after 5 s.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    std::vector<int> after;
    bool children = true;
    for (;;) {
      after = coropipe_test::open_fds();
      children = coropipe_test::has_children();
      if ((after == before_ && !children) || std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (after != before_) {
      violations.push_back("test case \"" + name_ + "\" changed the open descriptors from " +
                           coropipe_test::describe_fds(before_) + " to " +
                           coropipe_test::describe_fds(after));
    }
    if (children) {
      violations.push_back("test case \"" + name_ + "\" left child processes: " +
                           coropipe_test::describe_children());
      coropipe_test::kill_and_reap_all_children();
    }
  }

  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}

private:
  std::string name_;
  std::vector<int> before_;
};

} // namespace

REGISTER_LISTENER("coropipe-leaks", 1, leak_listener);

int main(int argc, char** argv) {
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  doctest::Context context(argc, argv);
  int result = context.run();
  if (context.shouldExit()) return result;
  for (const auto& v : violations) std::fprintf(stderr, "LEAK: %s\n", v.c_str());
  if (!violations.empty() && result == 0) result = 1;
  return result;
}
