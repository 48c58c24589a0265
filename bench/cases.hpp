// SPDX-License-Identifier: BSL-1.0
#pragma once

#include "harness.hpp"

#include <cstddef>
#include <vector>

namespace bench {

// Pins this process to the first CPU it may use and the streaming cases'
// children (raw and coropipe alike) to the second, so that every run places
// the two ends the same way. False (nothing pinned) with fewer than two CPUs.
bool pin_cpus();

// Called first thing in every streaming child, raw or coropipe (and in the
// workers of the pool latency case): moves it to the second CPU.
void pin_child() noexcept;

double raw_throughput(std::size_t chunk, std::size_t total, std::size_t capacity);
double coropipe_throughput(std::size_t chunk, std::size_t total, std::size_t capacity);
double raw_ping_pong(int rounds);
double coropipe_ping_pong(int rounds);
double raw_messages(int count);
double coropipe_messages(int count);
double raw_forks(int count);
double coropipe_forks(int count);
double floor_forks(int count);
double floor_async_forks(int count);
double floor_exit_forks(int count);
double fork_faults(double (*forks)(int), int count, bool parent);
double raw_spawns(int count);
// Floors: hand-written non-blocking I/O with epoll, no Asio (see cases.cpp).
double floor_throughput(std::size_t chunk, std::size_t total);
// How one side of case 1 is written: the hand-written floor, or coropipe.
enum class side { floor, coropipe };
double mixed_throughput(std::size_t chunk, std::size_t total, side reader, side writer);
double raw_zero_reads(int count);
double coropipe_zero_reads(int count);
double plain_coroutine_zero_reads(int count);
double empty_co_awaits(int count);
double floor_throughput_registered_while_waiting(std::size_t chunk, std::size_t total);
double floor_ping_pong(int rounds);
// What the optimisations bought: the same cases without them.
double plain_asio_throughput(std::size_t chunk, std::size_t total);
double unbatched_messages(int count);
double coropipe_spawns(int count);
double floor_async_spawns(int count);

// Sockets (sockets.cpp): the cases over a Unix socket and TCP loopback.
void add_socket_cases(std::vector<case_spec>& cases, const settings& s);

// A parent with a large resident set: @p bytes of anonymous memory, every
// page touched, held while the object lives.
class big_parent {
public:
  explicit big_parent(std::size_t bytes);
  ~big_parent();
  big_parent(const big_parent&) = delete;
  big_parent& operator=(const big_parent&) = delete;

private:
  void* mem_ = nullptr;
  std::size_t size_;
};

// Case 7 (memory): operator new calls per message in steady state.
double allocations_per_message(int count);
// Heap bytes held per open framed_stream pair after traffic.
double channel_allocations_per_message(int count);
// Heap bytes held per open channel end after traffic.
double heap_per_channel(int pairs);

} // namespace bench
