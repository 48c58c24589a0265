#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""Reads what `coropipe-bench --samples` prints on stderr and judges each row
pair by pair, with nothing but Python's standard library.

    build/bench/bench/coropipe-bench --samples --repetitions 61 \\
        --filter "throughput 4 KiB chunks" 2> samples.txt
    scripts/bench_pairs.py samples.txt

The two sides of a row are measured alternately, so each coropipe sample has
a baseline sample taken just before it, on the same machine at the same
speed. For every row with a baseline this prints the ratio of the medians
(what the suite reports), the median of the pairs' ratios with a 90%
bootstrap interval (2,000 resamples, fixed seed), and how many pairs reached
1.0x. Ratios are oriented as the suite's are: higher is better, so for rows
measured in time (ns, us, faults) the ratio is baseline / coropipe.

A row measured again as unsteady is judged on its last attempt only.
"""
import random
import re
import statistics
import sys

LOWER_IS_BETTER = ("round trip", "per-operation cost", "page faults", "ping-pong", "one request at a time")
SAMPLE = re.compile(r"^[0-9.e+]+/[0-9.e+]+$")


def rows(lines):
    for line in lines:
        if not line.startswith("  ") or "/" not in line:
            continue
        text = line.rstrip("\n")
        # The last attempt of a row measured again follows the last "again:".
        head, _, tail = text.rpartition("again:")
        fields = (tail if head else text).split()
        pairs = [tuple(float(x) for x in f.split("/")) for f in fields if SAMPLE.match(f)]
        if not pairs:
            continue
        name = re.split(r"\s{2,}|(?<=\S) (?=[0-9.e+]+/)", text.strip(), maxsplit=1)[0]
        yield name, pairs


def judge(name, pairs):
    lower = any(k in name for k in LOWER_IS_BETTER)
    orient = (lambda c, b: b / c) if lower else (lambda c, b: c / b)
    ratios = [orient(c, b) for c, b in pairs if c > 0 and b > 0]
    if not ratios:
        return None
    medians = orient(statistics.median(c for c, _ in pairs), statistics.median(b for _, b in pairs))
    rng = random.Random(1)
    boots = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    return {
        "pairs": len(ratios),
        "ratio_of_medians": medians,
        "median_pair_ratio": statistics.median(ratios),
        "low": boots[len(boots) * 5 // 100],
        "high": boots[len(boots) * 95 // 100 - 1],
        "at_least_one": sum(r >= 1 for r in ratios),
    }


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        found = False
        for name, pairs in rows(f):
            j = judge(name, pairs)
            if j is None:
                continue
            found = True
            print(f"{name}: {j['pairs']} pairs; ratio of medians {j['ratio_of_medians']:.3f}x; "
                  f"median pair ratio {j['median_pair_ratio']:.3f}x (90% interval {j['low']:.3f}x "
                  f"to {j['high']:.3f}x); {j['at_least_one']} pairs at 1.0x or above")
    if not found:
        print("no sample pairs found: was the file written with --samples?", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
