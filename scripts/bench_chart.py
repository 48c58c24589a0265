#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""Draws coropipe-bench's results as SVG charts, with nothing but Python's
standard library (no network, no plotting package).

    scripts/bench_chart.py results.json OUTDIR

writes OUTDIR/throughput.svg (MB/s against chunk size: coropipe and raw at
the default pipe capacity, coropipe at its recommended 1 MiB, and the
hand-written epoll floor), OUTDIR/messages.svg (framed messages per second
against one write per message), OUTDIR/ratios.svg (every case's ratio
against its target) and OUTDIR/table.md (the results as a Markdown table).
"""
import json
import math
import pathlib
import sys

W, H, PAD = 720, 420, 70
COLOURS = {"coropipe": "#1f77b4", "baseline": "#d62728", "coropipe, 1 MiB pipe": "#2ca02c",
           "floor: epoll without Asio": "#999999"}


def svg(width, height, body):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="sans-serif" font-size="12">\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(body) + "\n</svg>\n")


def text(x, y, s, anchor="middle", size=12, weight="normal"):
    s = s.replace("&", "&amp;").replace("<", "&lt;")
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" font-weight="{weight}">{s}</text>'


def throughput_chart(cases):
    series = {"coropipe": {}, "baseline": {}, "coropipe, 1 MiB pipe": {}, "floor: epoll without Asio": {}}
    for c in cases:
        if not c["name"].startswith("throughput"):
            continue
        chunk = c["params"]["chunk"]
        cap = c["params"]["pipe_capacity"]
        if c["name"].endswith("floor, epoll without Asio"):
            series["floor: epoll without Asio"][chunk] = c["coropipe"]
        elif ":" in c["name"]:
            continue  # other reference rows (e.g. plain Asio operations)
        elif cap == "default":
            series["coropipe"][chunk] = c["coropipe"]
            series["baseline"][chunk] = c["baseline"]
        else:
            series["coropipe, 1 MiB pipe"][chunk] = c["coropipe"]
    chunks = sorted(set(series["coropipe"]) | set(series["coropipe, 1 MiB pipe"]))
    values = [v for s in series.values() for v in s.values() if v]
    if not chunks or not values:
        return None
    lo, hi = math.log2(min(chunks)), math.log2(max(chunks))
    top = max(values) * 1.1
    def px(chunk):
        return PAD + (math.log2(chunk) - lo) / max(hi - lo, 1) * (W - 2 * PAD)
    def py(v):
        return H - PAD - v / top * (H - 2 * PAD)
    body = [text(W / 2, 24, "Throughput, child to parent (MB/s, higher is better)", size=15, weight="bold"),
            f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="black"/>',
            f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="black"/>',
            text(W / 2, H - 20, "chunk size (bytes per write and per read)")]
    for i in range(6):
        v = top * i / 5
        body.append(f'<line x1="{PAD - 4}" y1="{py(v):.1f}" x2="{W - PAD}" y2="{py(v):.1f}" stroke="#ddd"/>')
        body.append(text(PAD - 8, py(v) + 4, f"{v:.0f}", anchor="end"))
    for c in chunks:
        label = f"{c >> 20} MiB" if c >= 1 << 20 else f"{c >> 10} KiB" if c >= 1024 else f"{c} B"
        body.append(text(px(c), H - PAD + 18, label))
    for i, (name, pts) in enumerate(series.items()):
        xs = sorted(pts)
        if not xs:
            continue
        path = " ".join(f"{px(x):.1f},{py(pts[x]):.1f}" for x in xs)
        colour = COLOURS[name]
        body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        body += [f'<circle cx="{px(x):.1f}" cy="{py(pts[x]):.1f}" r="4" fill="{colour}"/>' for x in xs]
        body.append(f'<rect x="{PAD + 10}" y="{PAD + 18 * i - 10}" width="12" height="12" fill="{colour}"/>')
        body.append(text(PAD + 28, PAD + 18 * i, "raw baseline" if name == "baseline" else name, anchor="start"))
    return svg(W, H, body)


def messages_chart(cases):
    rows = [c for c in cases if c["name"].startswith("messages") and ":" not in c["name"] and c.get("baseline")]
    if not rows:
        return None
    c = rows[0]
    bars = [("coropipe framed_stream", c["coropipe"], COLOURS["coropipe"]),
            ("raw, one write(2) per message", c["baseline"], COLOURS["baseline"])]
    top = max(v for _, v, _ in bars) * 1.15
    left, width = 260, W - 260 - 60
    body = [text(W / 2, 24, f'16-byte messages per second, one sender (higher is better; ratio {c["ratio"]:.2f}x, '
                 f'target {c["target"]:g}x)', size=14, weight="bold")]
    for i, (name, v, colour) in enumerate(bars):
        y = PAD + 50 * i
        body.append(text(left - 10, y + 20, name, anchor="end"))
        body.append(f'<rect x="{left}" y="{y}" width="{v / top * width:.1f}" height="30" fill="{colour}"/>')
        body.append(text(left + v / top * width + 6, y + 20, f"{v / 1e6:.2f} M/s", anchor="start"))
    return svg(W, PAD + 50 * len(bars) + 20, body)


def ratio_chart(cases):
    rows = [c for c in cases if c.get("ratio") is not None]
    if not rows:
        return None
    height = PAD + 28 * len(rows) + 40
    left = max(320, 20 + int(6.6 * max(len(r["name"]) for r in rows)))  # room for the longest label
    width = left + 600
    top = max([r["ratio"] for r in rows] + [r["target"] or 0 for r in rows]) * 1.1
    def px(v):
        return left + v / top * (width - left - 60)
    body = [text(width / 2, 24, "coropipe / raw baseline (higher is better; | marks the target)", size=15, weight="bold")]
    for i, r in enumerate(rows):
        y = PAD + 28 * i
        met = r.get("met")
        colour = "#2ca02c" if met else "#d62728" if met is False else "#888"
        body.append(text(left - 10, y + 14, r["name"], anchor="end"))
        body.append(f'<rect x="{left}" y="{y}" width="{px(r["ratio"]) - left:.1f}" height="18" fill="{colour}"/>')
        body.append(text(px(r["ratio"]) + 6, y + 14, f'{r["ratio"]:.2f}x', anchor="start"))
        if r.get("target"):
            body.append(f'<line x1="{px(r["target"]):.1f}" y1="{y - 3}" x2="{px(r["target"]):.1f}" y2="{y + 21}" '
                        f'stroke="black" stroke-width="2"/>')
    body.append(f'<line x1="{px(1):.1f}" y1="{PAD - 8}" x2="{px(1):.1f}" y2="{height - 30}" stroke="#999" stroke-dasharray="4"/>')
    body.append(text(px(1), height - 14, "1.0 = as fast as raw"))
    return svg(width, height, body)


def fmt(v):
    if v is None:
        return "-"
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f} M"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def markdown_table(data):
    m = data.get("machine", {})
    lines = [f'Machine: {m.get("cpu", "?")}, {m.get("cores", "?")} cores, {m.get("kernel", "?")}, '
             f'compiler {m.get("compiler", "?")}, '
             f'{"parent and streaming children pinned to two CPUs" if m.get("pinned") else "not pinned"}.', "",
             "| case | unit | coropipe | baseline | ratio | target | met |",
             "|---|---|---:|---:|---:|---:|:---:|"]
    for c in data["cases"]:
        met = {True: "yes", False: "**no**"}.get(c.get("met"), "-")
        ratio = "-" if c.get("ratio") is None else f'{c["ratio"]:.2f}'
        target = "-" if c.get("target") is None else f'{c["target"]:.2f}'
        lines.append(f'| {c["name"]} | {c["unit"]} | {fmt(c["coropipe"])} | {fmt(c.get("baseline"))} | {ratio} '
                     f'| {target} | {met} |')
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    data = json.loads(pathlib.Path(sys.argv[1]).read_text())
    out = pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for name, chart in (("throughput.svg", throughput_chart(data["cases"])),
                        ("messages.svg", messages_chart(data["cases"])),
                        ("ratios.svg", ratio_chart(data["cases"]))):
        if chart is None:
            sys.exit(f"bench_chart.py: no data for {name}")
        (out / name).write_text(chart)
        print(f"wrote {out / name}")
    (out / "table.md").write_text(markdown_table(data))
    print(f"wrote {out / 'table.md'}")


if __name__ == "__main__":
    main()
