// SPDX-License-Identifier: BSL-1.0
#include "harness.hpp"

#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

namespace bench {

namespace {

std::string format_value(double v) {
  char buf[64];
  if (v == 0) return "0";
  if (std::fabs(v) >= 1e6) std::snprintf(buf, sizeof buf, "%.3g", v);
  else if (std::fabs(v) >= 100) std::snprintf(buf, sizeof buf, "%.0f", v);
  else std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

// How far apart one side's middle samples (its quartiles) may be before the
// row is measured again. This machine (two vCPUs) has two speeds for anything
// that crosses between its CPUs, about 3.5x apart, and switches between them
// every few seconds to minutes (docs/performance.md, "How much the machine
// moves"). A row that straddles a switch can compare one side's median at one
// speed with the other side's at the other; within one speed, the middle
// samples stay well inside this factor, and a lone outlier does not count.
// Rows longer than remeasure_seconds are kept as they are, and a run spends
// at most remeasure_budget seconds measuring again, to keep a full run
// within its 3 minutes.
constexpr double unsteady_spread = 2.0;
constexpr int max_attempts = 3;
constexpr double remeasure_seconds = 5.0;
constexpr double remeasure_budget = 20.0;
double remeasure_spent = 0;

bool steady(std::vector<double> v) {
  if (v.empty()) return true;
  std::sort(v.begin(), v.end());
  const double q1 = v[v.size() / 4];
  const double q3 = v[v.size() * 3 / 4];
  return q1 <= 0 || q3 <= q1 * unsteady_spread;
}

} // namespace

case_result run_case(const case_spec& spec, const settings& s) {
  case_result r;
  r.spec = spec;
  std::fprintf(stderr, "  %-44s", spec.name.c_str());
  if (spec.unavailable) {
    const std::string why = spec.unavailable();
    if (!why.empty()) {
      std::fprintf(stderr, " SKIPPED: %s\n", why.c_str());
      r.spec.note = "SKIPPED: " + why;
      return r;
    }
  }
  const auto t0 = clock::now();
  for (int attempt = 1;; ++attempt) {
    const auto started = clock::now();
    for (int i = 0; i < s.repetitions || (i < 4 * s.repetitions && seconds_since(started) < s.min_seconds); ++i) {
      if (spec.baseline) r.baseline_samples.push_back(spec.baseline());
      r.coropipe_samples.push_back(spec.coropipe());
      if (s.samples && spec.baseline)
        std::fprintf(stderr, " %s/%s", format_value(r.coropipe_samples.back()).c_str(),
                     format_value(r.baseline_samples.back()).c_str());
      else if (s.samples)
        std::fprintf(stderr, " %s", format_value(r.coropipe_samples.back()).c_str());
      else
        std::fprintf(stderr, ".");
    }
    const double took = seconds_since(started);
    if (!s.remeasure_unsteady || attempt == max_attempts || took > remeasure_seconds ||
        remeasure_spent + took > remeasure_budget || (steady(r.coropipe_samples) && steady(r.baseline_samples)))
      break;
    remeasure_spent += took;
    std::fprintf(stderr, " unsteady (one side's quartiles more than %gx apart), again:", unsteady_spread);
    r.coropipe_samples.clear();
    r.baseline_samples.clear();
    ++r.remeasured;
  }
  std::fprintf(stderr, " %.1f s\n", seconds_since(t0));
  r.coropipe = median(r.coropipe_samples);
  if (spec.baseline) {
    r.baseline = median(r.baseline_samples);
    if (r.coropipe > 0 && r.baseline > 0)
      r.ratio = spec.direction == better::higher ? r.coropipe / r.baseline : r.baseline / r.coropipe;
    if (spec.target && r.ratio) r.met = *r.ratio >= *spec.target;
  } else if (spec.target) {
    // Report-only cases with a target compare the value itself (e.g. 0 allocations).
    r.met = r.coropipe <= *spec.target;
  }
  return r;
}

namespace {

std::string json_number(std::optional<double> v) {
  if (!v || !std::isfinite(*v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", *v);
  return buf;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string read_first_line(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

} // namespace

void print_table(const std::vector<case_result>& results) {
  std::printf("%-44s %-14s %12s %12s %8s %8s %5s\n", "case", "unit", "coropipe", "baseline", "ratio", "target", "met");
  for (const auto& r : results) {
    std::printf("%-44s %-14s %12s %12s %8s %8s %5s\n", r.spec.name.c_str(), r.spec.unit.c_str(),
                format_value(r.coropipe).c_str(), r.spec.baseline ? format_value(r.baseline).c_str() : "-",
                r.ratio ? format_value(*r.ratio).c_str() : "-",
                r.spec.target ? format_value(*r.spec.target).c_str() : "-",
                r.met ? (*r.met ? "yes" : "NO") : "-");
  }
  for (const auto& r : results)
    if (!r.spec.note.empty()) std::printf("  %s: %s\n", r.spec.name.c_str(), r.spec.note.c_str());
  for (const auto& r : results)
    if (r.remeasured != 0)
      std::printf("  %s: measured again %d time(s), the machine having changed speed during it%s\n",
                  r.spec.name.c_str(), r.remeasured,
                  !(steady(r.coropipe_samples) && steady(r.baseline_samples))
                      ? "; still unsteady, kept"
                      : "");
}

void print_json(const std::vector<case_result>& results) {
  utsname u{};
  ::uname(&u);
  std::printf("{\n  \"machine\": {\"cores\": %ld, \"cpu\": %s, \"kernel\": %s, \"compiler\": %s, "
              "\"pipe_max_size\": %s, \"pinned\": %s},\n  \"cases\": [\n",
              ::sysconf(_SC_NPROCESSORS_ONLN), json_string(cpu_model()).c_str(),
              json_string(std::string(u.sysname) + " " + u.release).c_str(), json_string(__VERSION__).c_str(),
              read_first_line("/proc/sys/fs/pipe-max-size").c_str(), pinned ? "true" : "false");
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    std::printf("    {\"name\": %s, \"params\": %s, \"unit\": %s, \"coropipe\": %s, \"baseline\": %s, "
                "\"ratio\": %s, \"target\": %s, \"met\": %s}%s\n",
                json_string(r.spec.name).c_str(), r.spec.params.c_str(), json_string(r.spec.unit).c_str(),
                json_number(r.coropipe).c_str(),
                r.spec.baseline ? json_number(r.baseline).c_str() : "null", json_number(r.ratio).c_str(),
                json_number(r.spec.target).c_str(), r.met ? (*r.met ? "true" : "false") : "null",
                i + 1 < results.size() ? "," : "");
  }
  std::printf("  ]\n}\n");
}

} // namespace bench
