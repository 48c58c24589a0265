// SPDX-License-Identifier: BSL-1.0
// coropipe-bench: every case through coropipe and through a raw baseline in
// the same run, alternating, several repetitions, medians.
//   coropipe-bench [--quick] [--json] [--no-pin] [--samples] [--repetitions N] [--filter SUBSTRING]
// By default the process is pinned to one CPU and the streaming cases'
// children (raw and coropipe alike) to another: see pin_cpus().
#include "cases.hpp"
#include "pickle_cases.hpp"
#include "pool_cases.hpp"
#include "harness.hpp"

#include <coropipe/pipe.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace bench;

namespace {

std::string kib(std::size_t bytes) {
  return bytes >= (1U << 20) ? std::to_string(bytes >> 20) + " MiB"
         : bytes >= 1024     ? std::to_string(bytes >> 10) + " KiB"
                             : std::to_string(bytes) + " B";
}

std::vector<case_spec> all_cases(const settings& s) {
  std::vector<case_spec> cases;
  const std::size_t scale = s.quick ? 1 : 4;
  // 1. Throughput at the kernel's default capacity for both.
  struct tp {
    std::size_t chunk;
    std::size_t total;
    double target;
  };
  for (const tp& t : {tp{64, std::size_t{4} << 20, 0.9}, tp{4096, std::size_t{32} << 20, 1.0},
                      tp{65536, std::size_t{128} << 20, 1.0}, tp{1 << 20, std::size_t{128} << 20, 1.0}}) {
    const std::size_t total = t.total * scale;
    cases.push_back({"throughput " + kib(t.chunk) + " chunks",
                     "{\"chunk\": " + std::to_string(t.chunk) + ", \"bytes\": " + std::to_string(total) +
                         ", \"pipe_capacity\": \"default\"}",
                     "MB/s", better::higher, t.target,
                     [=] { return coropipe_throughput(t.chunk, total, 0); },
                     [=] { return raw_throughput(t.chunk, total, 0); }, ""});
  }
  // The floor under any readiness-based event loop, for the small chunks.
  for (std::size_t chunk : {std::size_t{64}, std::size_t{4096}}) {
    const std::size_t total = (chunk == 64 ? std::size_t{4} << 20 : std::size_t{32} << 20) * scale;
    cases.push_back({"throughput " + kib(chunk) + " chunks: floor, epoll without Asio",
                     "{\"chunk\": " + std::to_string(chunk) + ", \"bytes\": " + std::to_string(total) +
                         ", \"pipe_capacity\": \"default\"}",
                     "MB/s", better::higher, std::nullopt, [=] { return floor_throughput(chunk, total); },
                     [=] { return raw_throughput(chunk, total, 0); },
                     "reference: hand-written non-blocking read/write, epoll_wait only on EAGAIN"});
  }
  // The same floor at 64 B, its descriptors in epoll only while it waits:
  // what persistent registration (Asio's, hence coropipe's) costs.
  {
    const std::size_t total = (std::size_t{4} << 20) * scale;
    cases.push_back({"throughput 64 B chunks: floor, registered in epoll only while waiting",
                     "{\"chunk\": 64, \"bytes\": " + std::to_string(total) + ", \"pipe_capacity\": \"default\"}",
                     "MB/s", better::higher, std::nullopt,
                     [=] { return floor_throughput_registered_while_waiting(64, total); },
                     [=] { return raw_throughput(64, total, 0); },
                     "reference: the floor above with epoll_ctl ADD before each wait and DEL after (a polled pipe "
                     "wakes every registered waiter on each write)"});
  }
  // 4 KiB with the sides mixed: which side's per-operation cost shows.
  {
    const std::size_t total = (std::size_t{32} << 20) * scale;
    for (const bool coropipe_reads : {true, false}) {
      cases.push_back({coropipe_reads ? "throughput 4 KiB chunks: coropipe reader, floor writer"
                                      : "throughput 4 KiB chunks: floor reader, coropipe writer",
                       "{\"chunk\": 4096, \"bytes\": " + std::to_string(total) + ", \"pipe_capacity\": \"default\"}",
                       "MB/s", better::higher, std::nullopt,
                       [=] {
                         return coropipe_reads ? mixed_throughput(4096, total, side::coropipe, side::floor)
                                               : mixed_throughput(4096, total, side::floor, side::coropipe);
                       },
                       [=] { return raw_throughput(4096, total, 0); },
                       "reference: one side through coropipe's operations, the other hand-written as the floor"});
    }
  }
  // The price of one co_await per operation, without a pipe in the way.
  {
    const int reads = s.quick ? 200000 : 1000000;
    cases.push_back({"read 4 KiB: per-operation cost, /dev/zero", "{\"reads\": " + std::to_string(reads) + "}",
                     "ns/read", better::lower, std::nullopt, [=] { return coropipe_zero_reads(reads); },
                     [=] { return raw_zero_reads(reads); },
                     "reference: co_await coropipe::async_read_some against read(2), on a descriptor that never waits"});
    cases.push_back({"read 4 KiB: per-operation cost, plain coroutine around read(2)",
                     "{\"reads\": " + std::to_string(reads) + "}", "ns/read", better::lower, std::nullopt,
                     [=] { return plain_coroutine_zero_reads(reads); }, [=] { return raw_zero_reads(reads); },
                     "reference: read(2) alone in a coroutine of its own, co_await'ed: the least any co_await'ed "
                     "read costs"});
    cases.push_back({"co_await of an empty asio::awaitable", "{\"awaits\": " + std::to_string(reads * 4) + "}",
                     "ns/await", better::lower, std::nullopt, [=] { return empty_co_awaits(reads * 4); }, {},
                     "reference: Asio's coroutine machinery alone (a frame, two resumptions), the floor under any "
                     "co_await'ed operation"});
  }
  // Without try-first I/O: Asio's own operations.
  for (std::size_t chunk : {std::size_t{64}, std::size_t{4096}}) {
    const std::size_t total = (chunk == 64 ? std::size_t{4} << 20 : std::size_t{32} << 20) * scale;
    cases.push_back({"throughput " + kib(chunk) + " chunks: plain Asio operations",
                     "{\"chunk\": " + std::to_string(chunk) + ", \"bytes\": " + std::to_string(total) +
                         ", \"pipe_capacity\": \"default\"}",
                     "MB/s", better::higher, std::nullopt, [=] { return plain_asio_throughput(chunk, total); },
                     [=] { return raw_throughput(chunk, total, 0); },
                     "reference: asio::async_write / async_read_some, without coropipe's try-first I/O"});
  }
  // 2. coropipe at its recommended capacity, raw at the default.
  for (std::size_t chunk : {std::size_t{65536}, std::size_t{1} << 20}) {
    const std::size_t total = (std::size_t{128} << 20) * scale;
    cases.push_back({"throughput " + kib(chunk) + " chunks, 1 MiB pipe",
                     "{\"chunk\": " + std::to_string(chunk) + ", \"bytes\": " + std::to_string(total) +
                         ", \"pipe_capacity\": {\"coropipe\": " + std::to_string(coropipe::recommended_pipe_capacity) +
                         ", \"baseline\": \"default\"}}",
                     "MB/s", better::higher, 1.8,
                     [=] { return coropipe_throughput(chunk, total, coropipe::recommended_pipe_capacity); },
                     [=] { return raw_throughput(chunk, total, 0); }, ""});
  }
  // 3. Ping-pong: lower is better; the target 1/1.1 is "at most 1.1x raw".
  const int rounds = s.quick ? 5000 : 15000;
  cases.push_back({"ping-pong 16 B round trip", "{\"bytes\": 16, \"rounds\": " + std::to_string(rounds) + "}",
                   "us/round trip", better::lower, 1 / 1.1, [=] { return coropipe_ping_pong(rounds); },
                   [=] { return raw_ping_pong(rounds); }, ""});
  cases.push_back({"ping-pong: floor, epoll without Asio", "{\"bytes\": 16, \"rounds\": " + std::to_string(rounds) + "}",
                   "us/round trip", better::lower, std::nullopt, [=] { return floor_ping_pong(rounds); },
                   [=] { return raw_ping_pong(rounds); },
                   "reference: hand-written non-blocking write, read, epoll_wait on EAGAIN, read"});
  // 4. Framed messages against one write per message.
  const int messages = s.quick ? 200000 : 1000000;
  cases.push_back({"messages 16 B, one sender", "{\"payload\": 16, \"messages\": " + std::to_string(messages) + "}",
                   "msg/s", better::higher, 8.0, [=] { return coropipe_messages(messages); },
                   [=] { return raw_messages(messages); }, "baseline: one write(2) per frame"});
  // 5. Programs spawned and waited for, one after another; then the same
  // with a parent holding 1 GiB of touched memory, against coropipe's own
  // small-parent rate (the memory is mapped only while that case runs).
  const int spawns = s.quick ? 300 : 1500;
  cases.push_back({"spawn /bin/true + wait", "{\"programs\": " + std::to_string(spawns) + "}", "programs/s",
                   better::higher, 1.0, [=] { return coropipe_spawns(spawns); }, [=] { return raw_spawns(spawns); },
                   "baseline: posix_spawn + waitpid"});
  cases.push_back({"spawn /bin/true + wait: floor, pidfd wait through Asio",
                   "{\"programs\": " + std::to_string(spawns) + "}", "programs/s", better::higher, std::nullopt,
                   [=] { return floor_async_spawns(spawns); }, [=] { return raw_spawns(spawns); },
                   "reference: glibc's posix_spawn, the program waited for through its pidfd in Asio's reactor, then "
                   "waitid"});
  cases.push_back({"spawn /bin/true + wait, 1 GiB parent",
                   "{\"programs\": " + std::to_string(spawns) + ", \"parent_rss\": 1073741824}", "programs/s",
                   better::higher, 0.9,
                   [=] {
                     big_parent big(std::size_t{1} << 30);
                     return coropipe_spawns(spawns);
                   },
                   [=] { return coropipe_spawns(spawns); },
                   "baseline: coropipe's own rate in a small parent (the same run)"});
  cases.push_back({"messages 16 B: without batching", "{\"payload\": 16, \"messages\": " + std::to_string(messages / 4) + "}",
                   "msg/s", better::higher, std::nullopt, [=] { return unbatched_messages(messages / 4); },
                   [=] { return raw_messages(messages / 4); },
                   "reference: one coropipe::async_write per frame, received by a framed_stream"});
  // 6. Forked children, one after another.
  const int forks = s.quick ? 200 : 1000;
  cases.push_back({"fork + wait", "{\"children\": " + std::to_string(forks) + "}", "children/s", better::higher, 0.9,
                   [=] { return coropipe_forks(forks); }, [=] { return raw_forks(forks); }, ""});
  cases.push_back({"fork + wait: floor, Asio child without coropipe", "{\"children\": " + std::to_string(forks) + "}",
                   "children/s", better::higher, std::nullopt, [=] { return floor_forks(forks); },
                   [=] { return raw_forks(forks); },
                   "reference: a hand-written fork whose child runs one coroutine on an io_context"});
  cases.push_back({"fork + wait: floor, Asio child and pidfd wait without coropipe",
                   "{\"children\": " + std::to_string(forks) + "}", "children/s", better::higher, std::nullopt,
                   [=] { return floor_async_forks(forks); }, [=] { return raw_forks(forks); },
                   "reference: the same child, its pidfd waited for through Asio's reactor, then waitid"});
  cases.push_back({"fork + wait: floor, child that only exits, pidfd wait through Asio",
                   "{\"children\": " + std::to_string(forks) + "}", "children/s", better::higher, std::nullopt,
                   [=] { return floor_exit_forks(forks); }, [=] { return raw_forks(forks); },
                   "reference: the raw child (fork, _exit), waited for through Asio's reactor and its pidfd, then "
                   "waitid: the most any awaited child can reach"});
  // Where the time of a fork goes: every page either process writes after
  // the fork is a fault (a copy while both live), so these counts explain
  // the rates above. Counts barely vary: 200 children are enough.
  struct fault_row {
    const char* what;
    double (*forks)(int);
  };
  for (const fault_row& r : {fault_row{"", coropipe_forks}, fault_row{"async floor, ", floor_async_forks}}) {
    for (const bool parent : {true, false}) {
      const std::string who = parent ? "parent" : "child";
      cases.push_back({std::string("fork + wait: page faults per child, ") + r.what + "in the " + who,
                       "{\"children\": 200}", "faults", better::lower, std::nullopt,
                       [=] { return fork_faults(r.forks, 200, parent); },
                       [=] { return fork_faults(raw_forks, 200, parent); },
                       "reference: minor faults (getrusage) taken by the " + who + " per child"});
    }
  }
  // 7. Memory: report-only cases; the target is the value itself.
  const int counted = s.quick ? 100000 : 1000000;
  cases.push_back({"memory: framed_stream allocations/message", "{\"payload\": 16, \"messages\": " + std::to_string(counted) + "}",
                   "allocs/msg", better::lower, 0.0, [=] { return allocations_per_message(counted); }, {},
                   "operator new calls per message sent and received, after a warm-up"});
  cases.push_back({"memory: channel<string> allocations/message", "{\"payload\": 16, \"messages\": " + std::to_string(counted) + "}",
                   "allocs/msg", better::lower, 0.0, [=] { return channel_allocations_per_message(counted); }, {},
                   "receiving into a reused std::string"});
  cases.push_back({"memory: heap per open channel", "{\"pairs\": 100}", "bytes", better::lower, std::nullopt,
                   [] { return heap_per_channel(100); }, {}, "read-ahead and send queue of one channel end after traffic"});
  add_socket_cases(cases, s);
  // 8. Structured messages: a dict of 10 str keys to small ints, floats and
  // short strings, through the pickle codec against Python's own pickle in
  // this run (python3 -c timeit); the JSON codec's rate reported beside.
  const int msgs = s.quick ? 20000 : 200000;
  const std::string msg_params = "{\"message\": \"dict of 10 str keys\", \"messages\": " + std::to_string(msgs) + "}";
  cases.push_back({"pickle: encode a 10-key dict (vs Python's pickle.dumps)", msg_params, "msg/s", better::higher, 5.0,
                   [=] { return pickle_encode_rate(msgs); }, [=] { return python_dumps_rate(msgs); },
                   "codec<pyobject>::encode against pickle.dumps(d, 4) in python3"});
  cases.push_back({"pickle: decode a 10-key dict (vs Python's pickle.loads)", msg_params, "msg/s", better::higher, 5.0,
                   [=] { return pickle_decode_rate(msgs); }, [=] { return python_loads_rate(msgs); },
                   "codec<pyobject>::decode of Python's bytes against pickle.loads in python3"});
#if defined(COROPIPE_BENCH_JSON)
  cases.push_back({"json: encode the same dict (nlohmann-json)", msg_params, "msg/s", better::higher, std::nullopt,
                   [=] { return json_encode_rate(msgs); }, {}, "codec<nlohmann::json>::encode"});
  cases.push_back({"json: decode the same dict (nlohmann-json)", msg_params, "msg/s", better::higher, std::nullopt,
                   [=] { return json_decode_rate(msgs); }, {}, "codec<nlohmann::json>::decode"});
#endif
  // 9. Worker pools (2 forked workers, int -> int) against Python's pools,
  // run by the bench itself; latency against case 3's raw ping-pong.
  const int pool_requests = s.quick ? 50000 : 200000;
  cases.push_back({"pool: single requests vs ProcessPoolExecutor.submit",
                   "{\"workers\": 2, \"requests\": " + std::to_string(pool_requests) + ", \"python\": 3000}",
                   "requests/s", better::higher, 100.0, [=] { return pool_submit_rate(pool_requests); },
                   [=] { return python_executor_submit_rate(s.quick ? 1000 : 3000); },
                   "baseline: python3, ProcessPoolExecutor(2).submit(x + 1) for each request, then result()"});
  cases.push_back({"pool: single requests vs Pool.imap_unordered(chunksize=1)",
                   "{\"workers\": 2, \"requests\": " + std::to_string(pool_requests) + ", \"python\": 20000}",
                   "requests/s", better::higher, 50.0, [=] { return pool_submit_rate(pool_requests); },
                   [=] { return python_imap_rate(s.quick ? 5000 : 20000, "1"); },
                   "baseline: python3, multiprocessing.Pool(2).imap_unordered(x + 1, chunksize=1)"});
  const int map_items = s.quick ? 200000 : 1000000;
  cases.push_back({"pool: async_batch_map vs Pool.imap_unordered at its best chunksize",
                   "{\"workers\": 2, \"items\": " + std::to_string(map_items) + "}", "items/s", better::higher, 2.0,
                   [=] { return pool_batch_map_rate(map_items); },
                   [=] { return python_imap_rate(map_items, "64,256,1024,4096,8192"); },
                   "batch_pool<int, int>, default chunk size; baseline: the best of imap_unordered with chunksize 64 to 8192"});
  cases.push_back({"pool: async_map, one message per item (no batches)",
                   "{\"workers\": 2, \"items\": " + std::to_string(map_items / 5) + "}", "items/s", better::higher,
                   std::nullopt, [=] { return pool_map_rate(map_items / 5); }, {},
                   "pool<int, int>: what batching saves; report only"});
  const int pool_rounds = s.quick ? 5000 : 15000;
  cases.push_back({"pool: one request at a time vs raw ping-pong",
                   "{\"workers\": 2, \"rounds\": " + std::to_string(pool_rounds) + "}", "us/round trip",
                   better::lower, 1 / 1.2, [=] { return pool_round_trip(pool_rounds); },
                   [=] { return raw_ping_pong(pool_rounds); }, "baseline: case 3's raw ping-pong over two pipes"});
  // Pools over ssh (issue 16): 2 workers through ssh to a private sshd on
  // 127.0.0.1 against 2 local spawned workers, both this program re-executed.
  const int ssh_requests = s.quick ? 20000 : 100000;
  cases.push_back({"pool: over ssh (2 workers) vs 2 local spawned workers",
                   "{\"workers\": 2, \"window\": 256, \"in_flight\": 1024, \"requests\": " +
                       std::to_string(ssh_requests) + "}",
                   "requests/s", better::higher, 0.5, [=] { return ssh_pool_submit_rate(ssh_requests, true); },
                   [=] { return ssh_pool_submit_rate(ssh_requests, false); },
                   "tiny requests (int -> int), 4096 in flight, a window of 1024 per worker; ssh -T to sshd on 127.0.0.1 (tests/ssh_fixture.hpp), "
                   "default cipher, a launched worker group; both sides unpinned; "
                   "per-request overhead = 1/coropipe - 1/baseline",
                   [] { return ssh_unavailable(); }});
  const int ssh_rounds = s.quick ? 1000 : 5000;
  cases.push_back({"pool: over ssh, one request at a time vs local",
                   "{\"workers\": 2, \"rounds\": " + std::to_string(ssh_rounds) + "}", "us/round trip",
                   better::lower, std::nullopt, [=] { return ssh_pool_round_trip(ssh_rounds, true); },
                   [=] { return ssh_pool_round_trip(ssh_rounds, false); },
                   "the latency ssh adds to one round trip (coropipe - baseline); report only",
                   [] { return ssh_unavailable(); }});
  cases.push_back({"memory: pool allocations/request", "{\"requests\": " + std::to_string(counted) + "}",
                   "allocs/request", better::lower, std::nullopt,
                   [=] { return pool_allocations_per_request(counted / 10); }, {},
                   "operator new and aligned_alloc calls (Asio's frame and handler cache misses) per async_submit(int) awaited, after a warm-up"});
  return cases;
}

} // namespace

int main(int argc, char** argv) {
  // The pools of the ssh cases re-execute this program as their workers.
  if (argc == 2 && std::strcmp(argv[1], "--pool-worker") == 0) return serve_pool_worker();
  settings s;
  bool json = false;
  bool pin = true;
  std::string filter;
  int repetitions = 0;  // 0: the default for a full or a quick run
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) s.quick = true;
    else if (std::strcmp(argv[i], "--json") == 0) json = true;
    else if (std::strcmp(argv[i], "--no-pin") == 0) pin = false;
    else if (std::strcmp(argv[i], "--samples") == 0) s.samples = true;
    else if (std::strcmp(argv[i], "--repetitions") == 0 && i + 1 < argc) {
      repetitions = std::atoi(argv[++i]);
      if (repetitions <= 0) {
        std::fprintf(stderr, "coropipe-bench: --repetitions wants a positive number, not \"%s\"\n", argv[i]);
        return 2;
      }
    }
    else if (std::strcmp(argv[i], "--filter") == 0 && i + 1 < argc) filter = argv[++i];
    else {
      std::fprintf(stderr, "usage: coropipe-bench [--quick] [--json] [--no-pin] [--samples] [--repetitions N]"
                           " [--filter SUBSTRING]\n");
      return std::strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  s.repetitions = repetitions != 0 ? repetitions : s.quick ? 3 : 7;
  s.min_seconds = s.quick ? 0 : 1.0;
  s.remeasure_unsteady = !s.quick;  // --quick proves the suite works; it judges no number
  pinned = pin && pin_cpus();
  std::vector<case_result> results;
  try {
    for (const auto& c : all_cases(s))
      if (filter.empty() || c.name.find(filter) != std::string::npos) results.push_back(run_case(c, s));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "coropipe-bench: %s\n", e.what());
    return 1;
  }
  if (json) print_json(results);
  else print_table(results);
  return 0;
}
