// SPDX-License-Identifier: BSL-1.0
// Case 8: structured messages (pickle_cases.cpp). Rates in messages/s.
#pragma once

namespace bench {

double pickle_encode_rate(int count);
double pickle_decode_rate(int count);
double python_dumps_rate(int count);
double python_loads_rate(int count);
#if defined(COROPIPE_BENCH_JSON)
double json_encode_rate(int count);
double json_decode_rate(int count);
#endif

} // namespace bench
