#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""Checks that every layer of coropipe depends only on the layers below it
(the design's "Layers": descriptors, children, processes, messages): the coropipe headers and src/
headers that each public header and source file includes must belong to its
own layer or a lower one.

  scripts/layers.py    exit 1 and list each include that goes up a layer

A file is in the layer of its name (src/fork.cpp with include/coropipe/fork.hpp).
Files of no known layer are listed and not checked: add them to LAYERS.
"""
import pathlib
import re
import sys

# Bottom up. The umbrella header coropipe.hpp includes everything, on purpose.
LAYERS = [
    ("foundations", {"asio", "error", "sys", "sigpipe", "exit_status"}),
    ("descriptors", {"unique_fd", "pipe", "attach", "io"}),
    ("children", {"child", "fork", "reaper", "child_context"}),
    ("processes", {"spawn", "process_ops", "communicate", "pipeline"}),
    ("messages", {"frame", "framed_stream", "line_reader", "channel"}),
    ("structured messages", {"decode_error", "pickle", "pickle_internal", "pyobject", "json"}),
    ("sockets", {"address", "listener", "handshake", "fd_passing"}),
    ("many workers", {"scope", "pool", "batch", "launcher"}),
]
UMBRELLA = {"coropipe"}
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](?:coropipe/)?([A-Za-z0-9_]+)\.hpp[>"]', re.M)


def layer_of(stem: str):
    for rank, (_, names) in enumerate(LAYERS):
        if stem in names:
            return rank
    return None


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent
    files = sorted((root / "include" / "coropipe").glob("*.hpp")) + sorted((root / "src").glob("*.[ch]pp"))
    problems, unknown = [], []
    for path in files:
        stem = path.stem
        if stem in UMBRELLA:
            continue
        rank = layer_of(stem)
        if rank is None:
            unknown.append(path.relative_to(root))
            continue
        for name in INCLUDE.findall(path.read_text()):
            other = layer_of(name)
            if other is not None and other > rank:
                problems.append(f"{path.relative_to(root)} ({LAYERS[rank][0]}) includes {name}.hpp "
                                f"({LAYERS[other][0]}, a layer above)")
    for p in unknown:
        print(f"layers.py: {p} is in no known layer, not checked (add it to LAYERS)")
    for p in problems:
        print(f"layers.py: {p}")
    if problems:
        return 1
    print(f"layers.py: {len(files) - len(unknown)} files, each includes only its own layer and those below")
    return 0


if __name__ == "__main__":
    sys.exit(main())
