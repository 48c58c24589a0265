// SPDX-License-Identifier: BSL-1.0
// The main() of a fuzz target's replay build (COROPIPE_FUZZ_REPLAY): without
// libFuzzer, run LLVMFuzzerTestOneInput on each file named on the command line
// (the seed corpus), as a test in every build. Included at the end of each
// fuzz target.
#pragma once
#if defined(COROPIPE_FUZZ_REPLAY)
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>
int main(int argc, char** argv) {
  int count = 0;
  for (int i = 1; i < argc; ++i) {
    std::ifstream in(argv[i], std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "cannot read %s\n", argv[i]);
      return 1;
    }
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
    ++count;
  }
  std::printf("replayed %d inputs\n", count);
  return count > 0 ? 0 : 1;
}
#endif
