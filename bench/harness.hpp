// SPDX-License-Identifier: BSL-1.0
// coropipe-bench's harness: cases measured twice in one process run (through
// coropipe and through a raw baseline), alternating, with medians.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace bench {

using clock = std::chrono::steady_clock;

inline double seconds_since(clock::time_point t0) {
  return std::chrono::duration<double>(clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/// How a case's numbers compare: throughput-like (higher is better) or
/// latency-like (lower is better; the ratio is then baseline / coropipe).
enum class better { higher, lower };

/// Whether parent and streaming children run pinned to two CPUs (main.cpp).
inline bool pinned = false;

struct settings {
  bool quick = false;
  // Each side is measured at least `repetitions` times, and more while the
  // row has taken less than `min_seconds` (at most 4 x repetitions): cheap
  // rows get the samples that make their medians steady.
  int repetitions = 5;
  double min_seconds = 0;
  bool remeasure_unsteady = false;  // see run_case
  bool samples = false;  // print every sample to stderr as it is taken
};

/// One measurement of one side: returns the value in the case's unit.
using measure_fn = std::function<double()>;

struct case_spec {
  std::string name;
  std::string params;  // a JSON object
  std::string unit;
  better direction = better::higher;
  std::optional<double> target;  // the ratio to reach, if any
  measure_fn coropipe;
  measure_fn baseline;  // may be empty for a report-only case
  std::string note;     // printed under the table
  /// May be empty; else called first: a non-empty answer (why the case
  /// cannot run here, e.g. no sshd) skips the case, loudly, with that note.
  std::function<std::string()> unavailable{};
};

struct case_result {
  case_spec spec;
  double coropipe = 0;
  double baseline = 0;
  std::optional<double> ratio;
  std::optional<bool> met;
  std::vector<double> coropipe_samples;
  std::vector<double> baseline_samples;
  int remeasured = 0;  // times the row was thrown away as unsteady and measured again
};

/// Runs a case: the sides alternate, `repetitions` times each or more (see
/// settings). With `remeasure_unsteady`, a row of at most 5 s whose middle
/// samples on either side are more than 2x apart is measured again (at most
/// three times in all, and 20 s in a run): the machine changed speed during it.
case_result run_case(const case_spec& spec, const settings& s);

/// Prints the table, or the JSON document.
void print_table(const std::vector<case_result>& results);
void print_json(const std::vector<case_result>& results);

} // namespace bench
