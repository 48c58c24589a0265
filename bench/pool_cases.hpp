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

} // namespace bench
