// SPDX-License-Identifier: BSL-1.0
// The samples, run as programs, and the helpers they print with.
#include "python_format.hpp"

#include <doctest/doctest.h>

#include "support.hpp"

#include <coropipe/exit_status.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <regex>
#include <sstream>

using namespace std::chrono_literals;
using coropipe::exit_status;
using coropipe_test::finish_program;
using coropipe_test::run_program;
using coropipe_test::start_program;

namespace {

const std::string spam = COROPIPE_SAMPLE_SPAM;
const std::string spam_messages = COROPIPE_SAMPLE_SPAM_MESSAGES;
const std::string echo_worker = COROPIPE_SAMPLE_ECHO_WORKER;
const std::string echo_client = COROPIPE_SAMPLE_ECHO_CLIENT;
const std::string request_reply = COROPIPE_SAMPLE_REQUEST_REPLY;

struct spam_line {
  int pid;
  std::string payload;  // the bytes, decoded from b'...'
  double time;
};

// Parses "Parent <pid> got [b'...'] as <time>"; the payloads are plain
// "Spam N" text, so b'...' holds no escapes.
std::vector<spam_line> parse_spam(const std::string& out) {
  static const std::regex line_re(R"(^Parent (\d+) got \[b'([^'\\]*)'\] as (\d+\.\d+)$)");
  std::vector<spam_line> lines;
  std::istringstream is(out);
  for (std::string line; std::getline(is, line);) {
    std::smatch m;
    INFO("line: " << line);
    REQUIRE(std::regex_match(line, m, line_re));
    lines.push_back({std::stoi(m[1]), m[2], std::stod(m[3])});
  }
  return lines;
}

exit_status status_of(const coropipe_test::program_result& r) { return exit_status::from_wait_status(r.wait_status); }

} // namespace

TEST_CASE("python_format: bytes_repr prints like Python's repr(bytes)") {
  // Expected values printed by Python 3.11.
  CHECK(samples::bytes_repr("Spam 0") == "b'Spam 0'");
  CHECK(samples::bytes_repr("Spam 4Spam 0") == "b'Spam 4Spam 0'");
  CHECK(samples::bytes_repr("") == "b''");
  CHECK(samples::bytes_repr("it's") == "b\"it's\"");
  CHECK(samples::bytes_repr("both ' and \"") == "b'both \\' and \"'");
  CHECK(samples::bytes_repr(std::string("\x00\n\t\r\\\x7f\xff", 7)) == "b'\\x00\\n\\t\\r\\\\\\x7f\\xff'");
}

TEST_CASE("python_format: float_repr prints like Python's repr(float)") {
  CHECK(samples::float_repr(1764108421.1234567) == "1764108421.1234567");
  CHECK(samples::float_repr(1764108421.0) == "1764108421.0");
  CHECK(samples::float_repr(0.0001) == "0.0001");
  CHECK(samples::float_repr(1e16) == "1e+16");
  CHECK(samples::float_repr(1.5e-5) == "1.5e-05");
  CHECK(samples::float_repr(123.0) == "123.0");
  CHECK(samples::float_repr(0.1) == "0.1");
  CHECK(samples::float_repr(-2.5) == "-2.5");
  CHECK(samples::float_repr(1e22) == "1e+22");
  CHECK(samples::float_repr(5e-324) == "5e-324");
  CHECK(samples::float_repr(1234567890123456.7) == "1234567890123456.8");
  CHECK(samples::float_repr(0.0) == "0.0");
}

TEST_CASE("spam --count: the seed's output, line for line, then exit 0") {
  const double start = samples::unix_time();
  auto p = start_program({spam, "--count", "6", "--tick", "20ms"});
  const pid_t pid = p.pid;
  const auto r = finish_program(p);
  const double end = samples::unix_time();
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK_MESSAGE(r.err.empty(), r.err);
  const auto lines = parse_spam(r.out);
  REQUIRE_FALSE(lines.empty());
  std::string all;
  double last = 0;
  for (const auto& l : lines) {
    CHECK(l.pid == pid);            // printed by the parent, as os.getpid()
    CHECK(l.payload.size() <= 32);  // os.read(pipein, 32)
    CHECK(l.time >= last);
    CHECK(l.time >= start - 1);
    CHECK(l.time <= end + 1);
    last = l.time;
    all += l.payload;
  }
  // Every message, in order, none lost or repeated; the last "Spam 0" follows
  // "Spam 4" at once (zzz = 0), so they are often read together.
  CHECK(all == "Spam 0Spam 1Spam 2Spam 3Spam 4Spam 0");
  // 0+1+2+3+4+0 ticks of 20 ms at least (loosely: the machine is shared).
  CHECK(end - start >= 0.2 - 0.01);
}

TEST_CASE("spam --read-size: smaller reads split the messages") {
  const auto r = run_program({spam, "--count", "3", "--tick", "1ms", "--read-size", "4"});
  CHECK(status_of(r) == exit_status::from_code(0));
  std::string all;
  for (const auto& l : parse_spam(r.out)) {
    CHECK(l.payload.size() <= 4);
    all += l.payload;
  }
  CHECK(all == "Spam 0Spam 1Spam 2");
}

TEST_CASE("spam --count 0: nothing sent, clean end") {
  const auto r = run_program({spam, "--count=0"});
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK(r.out.empty());
  CHECK_MESSAGE(r.err.empty(), r.err);
}

TEST_CASE("spam --help prints the usage on stdout") {
  const auto r = run_program({spam, "--help"});
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK(r.out.find("usage: spam") == 0);
  CHECK_MESSAGE(r.err.empty(), r.err);
}

TEST_CASE("spam: a bad flag or value gives one line and the usage on stderr, exit 2") {
  const std::vector<std::vector<std::string>> bad = {
      {"--bogus"},          {"extra"},          {"--count"},       {"--count", "-1"},
      {"--count", "3x"},    {"--tick", "5"},    {"--tick", "1h"},  {"--tick", "-1s"},
      {"--read-size", "0"}, {"--read-size=x"},  {"--tick", "ms"}};
  for (const auto& args : bad) {
    std::vector<std::string> argv{spam};
    argv.insert(argv.end(), args.begin(), args.end());
    const auto r = run_program(argv);
    INFO("args: " << args.front() << (args.size() > 1 ? " " + args[1] : ""));
    CHECK(status_of(r) == exit_status::from_code(2));
    CHECK(r.out.empty());
    CHECK(r.err.find("spam: ") == 0);
    const auto eol = r.err.find('\n');
    REQUIRE(eol != std::string::npos);
    CHECK(r.err.substr(eol + 1).find("usage: spam") == 0);
  }
}

namespace {

// Starts spam, waits for its first line (which proves line buffering: the
// program is still running), and finds its forked child.
struct running_spam {
  coropipe_test::started_program p;
  pid_t child = 0;

  explicit running_spam(const std::string& program = spam) {
    p = start_program({program, "--tick", "50ms"});
    const std::string first = coropipe_test::read_line(p.out);
    CHECK(first.find("Parent " + std::to_string(p.pid) + " got [b'Spam 0'] as ") == 0);
    const auto kids = coropipe_test::children_of(p.pid);
    REQUIRE(kids.size() == 1);
    child = kids.front();
  }
};

} // namespace

TEST_CASE("spam: Ctrl-C or SIGTERM stops and reaps the child, and the program dies of the signal") {
  for (int sig : {SIGINT, SIGTERM}) {
    running_spam s;
    const auto sent = std::chrono::steady_clock::now();
    ::kill(s.p.pid, sig);
    const auto r = finish_program(s.p, 10s);
    const auto took = std::chrono::steady_clock::now() - sent;
    INFO("signal " << sig);
    CHECK(status_of(r) == exit_status::killed(sig));
    CHECK_MESSAGE(r.err.empty(), r.err);
    // The target is 100 ms; checked loosely, the machine is shared.
    CHECK(took < 3s);
    // Reaped by spam, not orphaned: it would be re-parented to this subreaper.
    CHECK(coropipe_test::process_state(s.child) == 0);
  }
}

TEST_CASE("spam: a child killed by a signal is reported on stderr, exit 1") {
  running_spam s;
  ::kill(s.child, SIGKILL);
  const auto r = finish_program(s.p, 10s);
  CHECK(status_of(r) == exit_status::from_code(1));
  CHECK(r.err == "spam: child " + std::to_string(s.child) + " killed by SIGKILL\n");
}

TEST_CASE("spam: when its reader goes away it stops quietly, like a SIGPIPE'd program") {
  running_spam s;
  ::close(s.p.out);  // spam | head -1
  s.p.out = -1;
  const auto r = finish_program(s.p, 10s);
  CHECK(status_of(r) == exit_status::from_code(128 + SIGPIPE));
  CHECK_MESSAGE(r.err.empty(), r.err);
  CHECK(coropipe_test::process_state(s.child) == 0);
}

TEST_CASE("spam_messages: one line per message, never coalesced") {
  // With no pause at all between messages, spam would print them run together.
  auto p = start_program({spam_messages, "--count", "11", "--tick", "0s"});
  const pid_t pid = p.pid;
  const auto r = finish_program(p);
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK_MESSAGE(r.err.empty(), r.err);
  const auto lines = parse_spam(r.out);
  REQUIRE(lines.size() == 11);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    CHECK(lines[i].pid == pid);
    CHECK(lines[i].payload == "Spam " + std::to_string(i % 5));
  }
}

TEST_CASE("spam_messages: same flags as spam, same handling of signals and bad flags") {
  const auto bad = run_program({spam_messages, "--tick", "1x"});
  CHECK(status_of(bad) == exit_status::from_code(2));
  CHECK(bad.out.empty());
  CHECK(bad.err.find("spam_messages: ") == 0);
  running_spam s(spam_messages);
  ::kill(s.p.pid, SIGTERM);
  const auto r = finish_program(s.p, 10s);
  CHECK(status_of(r) == exit_status::killed(SIGTERM));
  CHECK(coropipe_test::process_state(s.child) == 0);
}

TEST_CASE("echo_worker: a Python program drives it through multiprocessing.connection") {
  const std::string python = coropipe_test::find_on_path("python3");
  if (python.empty()) {
    MESSAGE("SKIPPED: no python3 on PATH, so the Python interoperability test cannot run");
    return;
  }
  const auto r = run_program({python, echo_client, echo_worker, "0", "1", "6", "4096", "65536", "1048576", "16777216"},
                             120s);
  INFO("stderr: " << r.err);
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK(r.out ==
        "echoed 0 bytes\nechoed 1 bytes\nechoed 6 bytes\nechoed 4096 bytes\nechoed 65536 bytes\n"
        "echoed 1048576 bytes\nechoed 16777216 bytes\nworker exited with 0\n");
}

TEST_CASE("echo_worker: frames in, the same frames out; bad frames are refused") {
  const std::string two_frames("\0\0\0\x06Spam 0\0\0\0\0", 14);
  auto r = coropipe_test::run_program_with_input({echo_worker}, two_frames);
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK(r.out == two_frames);

  r = coropipe_test::run_program_with_input({echo_worker}, std::string("\x80\0\0\x01x", 5));
  CHECK(status_of(r) == exit_status::from_code(1));
  CHECK(r.err.find("malformed frame header") != std::string::npos);

  r = coropipe_test::run_program_with_input({echo_worker}, std::string("\0\0\0\x09Spam", 8));
  CHECK(status_of(r) == exit_status::from_code(1));
  CHECK(r.err.find("stream ended in the middle of a message") != std::string::npos);

  r = coropipe_test::run_program_with_input({echo_worker, "--max-message-size", "3"}, two_frames);
  CHECK(status_of(r) == exit_status::from_code(1));
  CHECK(r.err.find("larger than the receiver's limit") != std::string::npos);

  r = run_program({echo_worker, "--bogus"});
  CHECK(status_of(r) == exit_status::from_code(2));
}

TEST_CASE("request_reply: every request answered by the forked worker") {
  const auto r = run_program({request_reply, "--count", "5"});
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK(r.out == "7 squared is 49\n8 squared is 64\n9 squared is 81\n10 squared is 100\n11 squared is 121\n"
                 "worker exited with 0\n");
}

TEST_CASE("request_reply: a slow answer times out, and arrives late to be dropped") {
  const auto r = run_program({request_reply, "--count", "3", "--slow", "2", "--timeout", "300ms"});
  CHECK(status_of(r) == exit_status::from_code(0));
  INFO("output: " << r.out);
  CHECK(r.out.find("7 squared is 49\nrequest 2 timed out\n") == 0);
  CHECK(r.out.find("late reply to request 2 dropped\n") != std::string::npos);
  CHECK(r.out.find("worker exited with 0\n") != std::string::npos);
  CHECK(r.out.find("8 squared") == std::string::npos);
}

TEST_CASE("request_reply: a bad frame is reported at once as the receive's error, not as a timeout") {
  // A timeout far longer than the test: had the receive's error waited out
  // the timer (a throwing receive in ||), this would take minutes.
  const auto start = std::chrono::steady_clock::now();
  const auto r = run_program({request_reply, "--count", "4", "--bad-frame", "2", "--timeout", "120s"}, 60s);
  const auto took = std::chrono::steady_clock::now() - start;
  INFO("output: " << r.out << "stderr: " << r.err);
  CHECK(status_of(r) == exit_status::from_code(1));
  // Framing errors are sticky: it stops asking after the first one.
  CHECK(r.out == "7 squared is 49\nrequest 2 failed: malformed frame header\nworker exited with 0\n");
  CHECK(took < 60s);
}

TEST_CASE("request_reply: bad flags") {
  const auto r = run_program({request_reply, "--count"});
  CHECK(status_of(r) == exit_status::from_code(2));
  CHECK(r.out.empty());
}

// ---------------------------------------------------------------------------
// run_capture and pipeline (chapter 3)

namespace {

const std::string run_capture = COROPIPE_SAMPLE_RUN_CAPTURE;
const std::string pipeline = COROPIPE_SAMPLE_PIPELINE;

coropipe_test::program_result run_with_input(const std::vector<std::string>& argv, const std::string& input) {
  return coropipe_test::run_program_with_input(argv, input);
}

} // namespace

TEST_CASE("run_capture: stdout and stderr labelled, then the status; its exit code is the program's") {
  const auto r = run_program({run_capture, "sh", "-c", "echo hello; echo oops >&2; printf 'no newline'; exit 3"});
  CHECK(status_of(r) == exit_status::from_code(3));
  CHECK(r.out ==
        "== stdout (16 bytes) ==\nhello\nno newline\n"
        "== stderr (5 bytes) ==\noops\n"
        "== exited with 3 ==\n");
  CHECK_MESSAGE(r.err.empty(), r.err);
}

TEST_CASE("run_capture: a program killed by a signal gives 128 + the signal") {
  const auto r = run_program({run_capture, "sh", "-c", "kill -TERM $$"});
  CHECK(status_of(r) == exit_status::from_code(128 + SIGTERM));
  CHECK(r.out.find("== killed by SIGTERM ==\n") != std::string::npos);
}

TEST_CASE("run_capture: stdout and stderr are captured concurrently") {
  // 1 MB on stderr before anything on stdout: a reader waiting for the end of
  // stdout first would never see it.
  const auto r = run_program({run_capture, "sh", "-c", "head -c 1000000 /dev/zero >&2; echo done"});
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK(r.out.find("== stdout (5 bytes) ==\ndone\n== stderr (1000000 bytes) ==\n") == 0);
}

TEST_CASE("run_capture: the program reads run_capture's stdin") {
  const auto r = run_with_input({run_capture, "tr", "a-z", "A-Z"}, "shout\n");
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK(r.out.find("== stdout (6 bytes) ==\nSHOUT\n") == 0);
}

TEST_CASE("run_capture: usage errors exit 2; a program that cannot start exits 127 or 126 with the reason") {
  const auto usage = run_program({run_capture});
  CHECK(status_of(usage) == exit_status::from_code(2));
  CHECK(usage.err.find("usage: run_capture") == 0);
  CHECK(usage.out.empty());

  const auto missing = run_program({run_capture, "no-such-program-coropipe"});
  CHECK(status_of(missing) == exit_status::from_code(127));
  CHECK(missing.err ==
        "run_capture: coropipe::spawn: execve no-such-program-coropipe: No such file or directory\n");

  char path[] = "/tmp/coropipe-samples-test-XXXXXX";  // mode 0600: not executable
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  const auto denied = run_program({run_capture, path});
  ::unlink(path);
  CHECK(status_of(denied) == exit_status::from_code(126));
  CHECK(denied.err == "run_capture: coropipe::spawn: execve " + std::string(path) + ": Permission denied\n");
}

TEST_CASE("pipeline: stdin through the stages to stdout; every stage's status on stderr") {
  const auto r = run_with_input({pipeline, "sort", "|", "uniq", "-c", "|", "sort", "-rn"}, "b\na\nb\n");
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK(r.out == "      2 b\n      1 a\n");
  CHECK(r.err ==
        "pipeline: stage 0 (sort): exited with 0\n"
        "pipeline: stage 1 (uniq): exited with 0\n"
        "pipeline: stage 2 (sort): exited with 0\n");
}

TEST_CASE("pipeline: the exit status is that of bash's set -o pipefail") {
  struct example {
    std::vector<std::string> args;
    std::string bash;
  };
  const std::vector<example> examples = {
      {{"yes", "|", "head", "-n", "2"}, "yes | head -n 2"},
      {{"sh", "-c", "exit 3", "|", "true"}, "sh -c 'exit 3' | true"},
      {{"true", "|", "sh", "-c", "exit 4"}, "true | sh -c 'exit 4'"},
      {{"sh", "-c", "exit 3", "|", "sh", "-c", "exit 5", "|", "cat"}, "sh -c 'exit 3' | sh -c 'exit 5' | cat"},
      {{"true", "|", "true"}, "true | true"},
      {{"sh", "-c", "kill -USR1 $$", "|", "cat"}, "sh -c 'kill -USR1 $$' | cat"},
  };
  for (const auto& e : examples) {
    INFO("pipeline " << e.bash);
    std::vector<std::string> argv{pipeline};
    argv.insert(argv.end(), e.args.begin(), e.args.end());
    const auto ours = run_program(argv);
    const auto bash = run_program({"/bin/bash", "-c", "set -o pipefail; " + e.bash});
    CHECK(status_of(ours) == status_of(bash));
    CHECK(ours.out == bash.out);
  }
  const auto r = run_program({pipeline, "yes", "|", "head", "-n", "2"});
  CHECK(status_of(r) == exit_status::from_code(141));
  CHECK(r.out == "y\ny\n");
  CHECK(r.err == "pipeline: stage 0 (yes): killed by SIGPIPE\npipeline: stage 1 (head): exited with 0\n");
}

TEST_CASE("pipeline: the last stage's output comes as it is written; SIGTERM stops every stage") {
  auto p = start_program({pipeline, "sh", "-c", "echo first; exec sleep 60", "|", "cat"});
  // Read while the pipeline still runs: cat writes straight to our pipe.
  CHECK(coropipe_test::read_line(p.out) == "first");
  ::kill(p.pid, SIGTERM);
  const auto r = finish_program(p, 30s);
  CHECK(status_of(r) == exit_status::killed(SIGTERM));
  CHECK(r.err ==
        "pipeline: stage 0 (sh): killed by SIGTERM\n"
        "pipeline: stage 1 (cat): killed by SIGTERM\n");
  // Had a stage outlived it, this subreaper would have inherited it.
  CHECK_FALSE(coropipe_test::has_children());
}

TEST_CASE("pipeline: usage errors exit 2; a stage that cannot start exits 127 with the reason") {
  for (const auto& args : std::vector<std::vector<std::string>>{{}, {"|", "cat"}, {"cat", "|"}, {"cat", "|", "|", "cat"}}) {
    std::vector<std::string> argv{pipeline};
    argv.insert(argv.end(), args.begin(), args.end());
    const auto r = run_program(argv);
    CHECK(status_of(r) == exit_status::from_code(2));
    CHECK(r.err.find("usage: pipeline") == 0);
  }
  const auto r = run_program({pipeline, "true", "|", "no-such-program-coropipe"});
  CHECK(status_of(r) == exit_status::from_code(127));
  CHECK(r.err ==
        "pipeline: coropipe::spawn: stage 1 (no-such-program-coropipe): execve no-such-program-coropipe: "
        "No such file or directory\n");
}

TEST_CASE("program_snippets: the chapter 3 examples that need only standard programs run") {
  const auto r = run_program({COROPIPE_SAMPLE_PROGRAM_SNIPPETS});
  INFO("stderr: " << r.err);
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK(r.out == "communicate: exited with 0\npipeline:       2 b\n      1 a\n");
}

TEST_CASE("hello: the README's program prints what its child wrote and how the child ended") {
  const auto r = run_program({COROPIPE_SAMPLE_HELLO});
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK(r.out == "child says: Hello from the child\nchild exited with 0\n");
  CHECK_MESSAGE(r.err.empty(), r.err);
}

TEST_CASE("first_project: the first project's main.cpp runs uname and reports it") {
  const auto r = run_program({COROPIPE_SAMPLE_FIRST_PROJECT});
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK(r.out.find("uname says: Linux ") == 0);
  CHECK(r.out.find("\nuname exited with 0\n") != std::string::npos);
  CHECK_MESSAGE(r.err.empty(), r.err);
}

TEST_CASE("errors_and_races: what docs/errors.md says each case prints") {
  const auto r = run_program({COROPIPE_SAMPLE_ERRORS_AND_RACES});
  INFO("stderr: " << r.err);
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK(r.out ==
        "thrown: malformed frame header\n"
        "returned: malformed frame header\n"
        "sync pair: two ends\n"
        "channel receive at the end: an empty optional\n"
        "byte read at the end: 0 bytes, asio::error::eof\n"
        "||: branch 1 won\n"
        "parallel group: the receive first, malformed frame header; the timer cancelled\n"
        "out of io.run(): an error nobody caught\n");
}

// --- echo_server and msg_client (sockets) ----------------------------------------------

namespace {

const std::string echo_server = COROPIPE_SAMPLE_ECHO_SERVER;
const std::string msg_client = COROPIPE_SAMPLE_MSG_CLIENT;

std::string socket_path(const char* what) {
  return "/tmp/coropipe-test-" + std::to_string(::getpid()) + "-" + what + ".sock";
}

// Starts echo_server and returns it with the address from its first line.
std::pair<coropipe_test::started_program, std::string> start_echo_server(std::vector<std::string> args) {
  args.insert(args.begin(), echo_server);
  auto p = start_program(args);
  const std::string line = coropipe_test::read_line(p.out);
  REQUIRE(line.rfind("listening on ", 0) == 0);
  return {p, line.substr(13)};
}

// SIGTERM, then the exit status (within a second on an idle machine; the
// bound here is loose, for a loaded one).
coropipe_test::program_result stop(coropipe_test::started_program& p) {
  ::kill(p.pid, SIGTERM);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = finish_program(p, 10s);
  CHECK(coropipe_test::seconds_since(t0) < 5.0);
  return r;
}

} // namespace

TEST_CASE("echo_server + msg_client: lines echoed over a Unix socket; SIGTERM exits 0 and removes the file") {
  const std::string path = socket_path("echo");
  auto [server, addr] = start_echo_server({"--listen", path});
  CHECK(addr == path);
  struct ::stat sb {};
  REQUIRE(::lstat(path.c_str(), &sb) == 0);
  CHECK((sb.st_mode & 0777) == 0600);
  const auto r = coropipe_test::run_program_with_input({msg_client, "--connect", addr}, "hello\n\nworld\n");
  CHECK(status_of(r).exit_code() == 0);
  CHECK(r.out == "hello\n\nworld\n");
  const auto s = stop(server);
  CHECK(status_of(s).exit_code() == 0);
  CHECK_MESSAGE(s.err.empty(), s.err);
  CHECK(::lstat(path.c_str(), &sb) != 0);
}

TEST_CASE("echo_server + msg_client: authkey from the environment; a wrong key is one line on each side") {
  ::setenv("COROPIPE_TEST_KEY", "s3cret", 1);
  ::setenv("COROPIPE_TEST_WRONG", "guess", 1);
  auto [server, addr] = start_echo_server({"--listen", "127.0.0.1:0", "--authkey-env", "COROPIPE_TEST_KEY"});
  CHECK(addr.rfind("127.0.0.1:", 0) == 0);
  CHECK(addr != "127.0.0.1:0");
  const auto ok = coropipe_test::run_program_with_input(
      {msg_client, "--connect", addr, "--authkey-env", "COROPIPE_TEST_KEY"}, "spam\neggs\n");
  CHECK(status_of(ok).exit_code() == 0);
  CHECK(ok.out == "spam\neggs\n");
  const auto bad = coropipe_test::run_program_with_input(
      {msg_client, "--connect", addr, "--authkey-env", "COROPIPE_TEST_WRONG"}, "spam\n");
  CHECK(status_of(bad).exit_code() == 1);
  CHECK(bad.out.empty());
  CHECK(bad.err.find("authentication failed") != std::string::npos);
  CHECK(std::count(bad.err.begin(), bad.err.end(), '\n') == 1);
  // A Python client with the right key, still served after the failure.
  const std::string python = COROPIPE_SAMPLE_PYTHON;
  if (python.empty()) {
    MESSAGE("no Python found at configure time: the Python client case is SKIPPED");
  } else {
    const auto colon = addr.rfind(':');
    const auto py = coropipe_test::run_program(
        {python, "-c",
         "import sys\nfrom multiprocessing.connection import Client\n"
         "c = Client((sys.argv[1], int(sys.argv[2])), authkey=b's3cret')\n"
         "c.send_bytes(b'from Python'); print(c.recv_bytes().decode())",
         addr.substr(0, colon), addr.substr(colon + 1)});
    CHECK(py.out == "from Python\n");
  }
  const auto s = stop(server);
  CHECK(status_of(s).exit_code() == 0);
  CHECK(s.err.find("echo_server: client refused: authentication failed") == 0);
  CHECK(std::count(s.err.begin(), s.err.end(), '\n') == 1);
}

TEST_CASE("echo_server --objects: Python's send(obj)/recv() round trip gives an equal object; garbage gets an error str") {
  const std::string python = COROPIPE_SAMPLE_PYTHON;
  if (python.empty()) {
    MESSAGE("no Python found at configure time: echo_server --objects is SKIPPED");
    return;
  }
  const std::string path = socket_path("objects");
  auto [server, addr] = start_echo_server({"--listen", path, "--objects"});
  const auto py = coropipe_test::run_program(
      {python, "-c",
       "import sys\nfrom multiprocessing.connection import Client\n"
       "c = Client(sys.argv[1])\n"
       "shared = [1, 2]\n"
       "for obj in [{'name': 'spam', 'n': 2**70, 'x': -0.0, (1, 'k'): {b'b', None}}, [shared, shared],\n"
       "            bytearray(b'ab'), frozenset({1, 2}), 'caf\\u00e9 \\U0001F600', (), {}]:\n"
       "    c.send(obj)\n"
       "    back = c.recv()\n"
       "    assert back == obj and type(back) is type(obj), (obj, back)\n"
       "c.send_bytes(b'not a pickle')\n"
       "err = c.recv()\n"
       "assert isinstance(err, str) and err.startswith('error: '), err\n"
       "c.send(42); assert c.recv() == 42\n"
       "print('ok')",
       addr});
  CHECK(py.err == "");
  CHECK(py.out == "ok\n");
  const auto s = stop(server);
  CHECK(status_of(s).exit_code() == 0);
}

TEST_CASE("echo_server and msg_client: bad flags exit 2 with the usage; a refused connection exits 1") {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {echo_server}, {echo_server, "--bogus"}, {echo_server, "--listen", "[::1]"},
           {echo_server, "--listen", "@x", "--authkey-env", "COROPIPE_NO_SUCH_VARIABLE"},
           {echo_server, "--listen", "@x", "--max-clients", "x"},
           {msg_client}, {msg_client, "--connect"}, {msg_client, "--connect", "@x", "extra"}}) {
    INFO(args.size());
    const auto r = run_program(args);
    CHECK(status_of(r).exit_code() == 2);
    CHECK(r.err.find("usage: ") != std::string::npos);
  }
  const auto r = coropipe_test::run_program_with_input({msg_client, "--connect", socket_path("nobody")}, "x\n");
  CHECK(status_of(r).exit_code() == 1);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
}

TEST_CASE("echo_server --max-clients: clients beyond the limit wait their turn") {
  auto [server, addr] = start_echo_server({"--listen", "@" + socket_path("max").substr(5), "--max-clients", "1"});
  const auto a = coropipe_test::run_program_with_input({msg_client, "--connect", addr}, "one\n");
  const auto b = coropipe_test::run_program_with_input({msg_client, "--connect", addr}, "two\n");
  CHECK(a.out == "one\n");
  CHECK(b.out == "two\n");
  const auto s = stop(server);
  CHECK(status_of(s).exit_code() == 0);
}

TEST_CASE("py_dicts: C++ sends dicts to an unmodified Python worker and gets dicts back") {
  const std::string python = coropipe_test::find_on_path("python3");
  if (python.empty()) {
    MESSAGE("SKIPPED: no python3 on PATH, so the Python interoperability test cannot run");
    return;
  }
  const auto r = run_program({COROPIPE_SAMPLE_PY_DICTS, COROPIPE_SAMPLE_PY_WORKER, python});
  INFO("stderr: " << r.err);
  CHECK(status_of(r) == exit_status::from_code(0));
  CHECK(r.out ==
        "{'id': 0, 'words': 2, 'shout': 'SPAM 0', 'letters': ['0', 'S', 'a', 'm', 'p']}\n  2 words\n"
        "{'id': 1, 'words': 2, 'shout': 'LOVELY SPAM', 'letters': ['a', 'e', 'l', 'm', 'o', 'p', 's', 'v', 'y']}\n"
        "  2 words\n"
        "{'id': 2, 'words': 4, 'shout': 'WONDERFUL SPAM AND EGGS', 'letters': "
        "['a', 'd', 'e', 'f', 'g', 'l', 'm', 'n', 'o', 'p', 'r', 's', 'u', 'w']}\n  4 words\n"
        "worker exited with 0\n");
  CHECK(run_program({COROPIPE_SAMPLE_PY_DICTS}).wait_status != 0);
}

namespace {
const std::string prime_pool = COROPIPE_SAMPLE_PRIME_POOL;
const std::string collatz = COROPIPE_SAMPLE_COLLATZ;
}

TEST_CASE("collatz: batched and unbatched pools give the same chains") {
  const std::string expected = "longest below 1000000: 837799 (524 steps)\ntotal steps: 131434272\n";
  auto r = run_program({collatz});
  CHECK(status_of(r).success());
  CHECK(r.out == expected);
  CHECK(r.err.find("items/s, batched)") != std::string::npos);
  r = run_program({collatz, "--chunk", "1000", "--workers", "3"});
  CHECK(r.out == expected);
  r = run_program({collatz, "--limit", "10", "--chunk", "1"});
  CHECK(r.out == "longest below 10: 9 (19 steps)\ntotal steps: 61\n");
  r = run_program({collatz, "--limit", "10", "--unbatched"});
  CHECK(r.out == "longest below 10: 9 (19 steps)\ntotal steps: 61\n");
  CHECK(r.err.find("one message per item") != std::string::npos);
  r = run_program({collatz, "--limit", "1"});
  CHECK(r.out == "total steps: 0\n");
  r = run_program({collatz, "--chunk", "0"});
  CHECK(status_of(r).exit_code() == 2);
  CHECK(r.err.find("--chunk takes a whole number from 1") != std::string::npos);
  CHECK_FALSE(coropipe_test::has_children());
}

TEST_CASE("prime_pool: the count of primes, with forked and with re-executed workers") {
  auto r = run_program({prime_pool, "--limit", "1000000", "--workers", "2"});
  CHECK(status_of(r).success());
  CHECK(r.out == "primes below 1000000: 78498\n");
  CHECK_MESSAGE(r.err.empty(), r.err);
  r = run_program({prime_pool, "--limit", "1000000", "--chunk", "7777", "--workers", "3", "--spawn"});
  CHECK(status_of(r).success());
  CHECK(r.out == "primes below 1000000: 78498\n");
  r = run_program({prime_pool, "--limit", "100", "--chunk", "1"});
  CHECK(r.out == "primes below 100: 25\n");
  CHECK_FALSE(coropipe_test::has_children());
}

TEST_CASE("prime_pool: a worker killed with SIGKILL mid-run does not change the count") {
  for (const bool spawned : {false, true}) {
    INFO("spawned: " << spawned);
    std::vector<std::string> argv{prime_pool, "--limit", "30000000", "--chunk", "50000", "--workers", "2"};
    if (spawned) argv.push_back("--spawn");
    auto p = start_program(argv);
    std::vector<pid_t> workers;
    for (int i = 0; i < 2000 && workers.size() < 2; ++i) {
      workers = coropipe_test::children_of(p.pid);
      ::usleep(1000);
    }
    REQUIRE(!workers.empty());
    ::usleep(50000);
    const bool killed = ::kill(workers.front(), SIGKILL) == 0;
    const auto r = finish_program(p, 120s);
    CHECK(status_of(r).success());
    CHECK(r.out == "primes below 30000000: 1857859\n");
    if (killed && status_of(r).success())
      CHECK(r.err == "prime_pool: worker " + std::to_string(workers.front()) + " killed by SIGKILL; replaced\n");
    CHECK_FALSE(coropipe_test::has_children());
  }
}

TEST_CASE("prime_pool: Ctrl-C stops it within a second, nothing left running") {
  auto p = start_program({prime_pool, "--limit", "4000000000000", "--chunk", "100000000", "--workers", "2"});
  for (int i = 0; i < 2000 && coropipe_test::children_of(p.pid).size() < 2; ++i) ::usleep(1000);
  ::usleep(100000);
  const auto sent = std::chrono::steady_clock::now();
  ::kill(p.pid, SIGINT);
  const auto r = finish_program(p, 30s);
  const auto took = std::chrono::steady_clock::now() - sent;
  CHECK(status_of(r).exit_code() == 130);
  CHECK(took < 3s);  // the target is well under a second; loosely checked, the machine is shared
  CHECK(r.out.empty());
  CHECK_FALSE(coropipe_test::has_children());
}

TEST_CASE("prime_pool: bad flags give the usage on stderr, exit 2") {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"--limit"}, {"--limit", "x"}, {"--chunk", "0"}, {"--workers", "0"}, {"--bogus"}}) {
    std::vector<std::string> argv{prime_pool};
    argv.insert(argv.end(), args.begin(), args.end());
    const auto r = run_program(argv);
    CHECK(status_of(r).exit_code() == 2);
    CHECK(r.out.empty());
    CHECK(r.err.find("usage: prime_pool") != std::string::npos);
  }
}

namespace {
// The shell's background sleep, killed by the scope, is re-parented to this
// subreaper (its own parent is gone): it must be dead already, a zombie.
// Reaps such orphans; true when every child of this process was dead.
bool orphans_were_dead() {
  bool dead = true;
  for (pid_t pid : coropipe_test::children_of(::getpid())) {
    for (int i = 0; i < 500 && coropipe_test::process_state(pid) != 'Z'; ++i) ::usleep(1000);
    dead = dead && coropipe_test::process_state(pid) == 'Z';
    ::kill(pid, SIGKILL);
    coropipe_test::wait_for_pid(pid, 5000ms);
  }
  return dead;
}
} // namespace

TEST_CASE("scoped_children: the scope stops the sleepers (grandchild included) and reaps them") {
  const std::string scoped = COROPIPE_SAMPLE_SCOPED_CHILDREN;
  const auto start = std::chrono::steady_clock::now();
  auto r = run_program({scoped});
  CHECK(status_of(r).success());
  CHECK(r.out == "worker exited with 0\nscope ended, nothing left running\n");
  CHECK(std::chrono::steady_clock::now() - start < 30s);
  CHECK(orphans_were_dead());
  CHECK_FALSE(coropipe_test::has_children());
  r = run_program({scoped, "--fail"});
  CHECK(status_of(r).exit_code() == 1);
  CHECK(r.err.find("scoped_children: coropipe::async_scope: child ") == 0);
  CHECK(r.err.find("(forked child) exited with 3") != std::string::npos);
  CHECK(r.out.find("scope ended") == std::string::npos);
  CHECK(orphans_were_dead());
  CHECK_FALSE(coropipe_test::has_children());
  r = run_program({scoped, "--bogus"});
  CHECK(status_of(r).exit_code() == 2);
}
