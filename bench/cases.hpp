#pragma once

#include "harness.hpp"

#include <cstddef>

namespace bench {

double raw_throughput(std::size_t chunk, std::size_t total, std::size_t capacity);
double coropipe_throughput(std::size_t chunk, std::size_t total, std::size_t capacity);
double raw_ping_pong(int rounds);
double coropipe_ping_pong(int rounds);
double raw_messages(int count);
double coropipe_messages(int count);
double raw_forks(int count);
double coropipe_forks(int count);
double floor_forks(int count);

// Case 7 (memory): operator new calls per message in steady state.
double allocations_per_message(int count);
// Heap bytes held per open framed_stream pair after traffic.
double channel_allocations_per_message(int count);
// Heap bytes held per open channel end after traffic.
double heap_per_channel(int pairs);

} // namespace bench
