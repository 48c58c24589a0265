#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""Checks (or with --fix adds) the one-line SPDX licence header on every source file.

  scripts/spdx.py          exit 1 and list the files that lack it
  scripts/spdx.py --fix    add it where it is missing (after a #! line)
"""
import pathlib
import subprocess
import sys

TAG = "SPDX-License-Identifier: BSL-1.0"
SLASH = {".cpp", ".hpp", ".h", ".c"}
HASH = {".py", ".sh", ".cmake", ".in", ".txt"}
HASH_NAMES = {"CMakeLists.txt", "run", "install-deps"}


def comment_for(path: pathlib.Path):
    if path.suffix in SLASH:
        return "// "
    if path.name in HASH_NAMES or path.suffix in {".py", ".sh", ".cmake"} or path.name.endswith(".cmake.in") \
            or path.name.endswith(".pc.in"):
        return "# "
    return None


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                           check=True, capture_output=True, text=True).stdout.split()
    fix = "--fix" in sys.argv[1:]
    missing = []
    for name in files:
        path = root / name
        prefix = comment_for(path)
        if prefix is None or not path.is_file() or name.startswith("fuzz/corpus/"):
            continue
        text = path.read_text()
        if TAG in "\n".join(text.split("\n")[:3]):
            continue
        missing.append(name)
        if fix:
            lines = text.split("\n")
            at = 1 if lines and lines[0].startswith("#!") else 0
            lines.insert(at, prefix + TAG)
            path.write_text("\n".join(lines))
    if missing and not fix:
        print("missing the SPDX header (" + TAG + "):", *missing, sep="\n  ")
        return 1
    if fix and missing:
        print(f"added the SPDX header to {len(missing)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
