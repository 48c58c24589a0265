// SPDX-License-Identifier: BSL-1.0
// Case 8: worker pools against Python's pools (see pool_cases.cpp).
#pragma once

#include "harness.hpp"

#include <string>

namespace bench {

double pool_submit_rate(int n);                  // requests/s, many in flight
double python_executor_submit_rate(int n);       // ProcessPoolExecutor.submit, requests/s
double python_imap_rate(int n, const std::string& chunksizes);  // best imap_unordered, items/s
double pool_map_rate(int n);                     // async_map, items/s
double pool_batch_map_rate(int n);               // async_batch_map (batch.hpp), items/s
double pool_round_trip(int rounds);              // us per request, one at a time
double pool_allocations_per_request(int n);      // operator new calls per request

// Pools of 2 spawned workers (this program re-executed with --pool-worker),
// local or through ssh to a private sshd on 127.0.0.1 (tests/ssh_fixture.hpp),
// started on first use and stopped at exit.
std::string ssh_unavailable();                   // why the ssh cases cannot run ("" when they can)
double ssh_pool_submit_rate(int n, bool over_ssh);  // requests/s, a window in flight
double ssh_pool_round_trip(int rounds, bool over_ssh);  // us per request, one at a time
/// The worker side of those pools (main() with --pool-worker).
int serve_pool_worker();

} // namespace bench
