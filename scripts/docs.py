#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""Keeps docs/ honest. Needs nothing but Python 3's standard library.

  scripts/docs.py --check    fail (exit 1) if anything below is out of date
  scripts/docs.py --update   rewrite what is out of date

1. Code regions. A Markdown file shows compiled code by including it:

       <!-- include: samples/spam.cpp#spam-child -->
       ```cpp
       ...the region, copied by --update...
       ```
       <!-- end include -->

   where the source marks the region with `// [docs:spam-child]` and
   `// [docs:end]` lines (`#` instead of `//` in Python and shell). --check fails when a copy differs from its source.
2. Reference pages. docs/reference/<header>.md is generated from the `///`
   comments of include/coropipe/<header>.hpp: every public header has one.
3. Every C++ or CMake block is checked. In README.md and docs/ (outside the
   generated reference pages), a ```cpp, ```c++ or ```cmake block is either
   an include (1. above) or preceded by a line `<!-- fragment -->`, which
   says that it is a partial snippet shown on purpose and not compiled.
   --check names every other block as file:line.
4. The README's commands. The README marks its two commands with
   `<!-- command:sample -->` and `<!-- command:test -->` before a ```sh block
   of one line; .ci/run must contain the test command verbatim.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
INCLUDE_RE = re.compile(
    r"(<!-- include: (?P<path>[^#\s]+)#(?P<region>[\w-]+) -->\n```(?P<lang>\w*)\n)(?P<body>.*?)(```\n<!-- end include -->)",
    re.S)


def region(path, name):
    text = (ROOT / path).read_text()
    m = re.search(r"^[ \t]*(?://|#) \[docs:%s\]\n(.*?)^[ \t]*(?://|#) \[docs:end\]\n" % re.escape(name), text, re.S | re.M)
    if not m:
        raise SystemExit(f"docs.py: no region [docs:{name}] in {path}")
    lines = m.group(1).splitlines()
    indent = min((len(l) - len(l.lstrip()) for l in lines if l.strip()), default=0)
    return "\n".join(l[indent:] for l in lines) + "\n"


def sync_includes(text):
    return INCLUDE_RE.sub(lambda m: m.group(1) + region(m.group("path"), m.group("region")) + m.group(6), text)


CODE_LANGS = ("cpp", "c++", "cmake")
FRAGMENT_MARK = "<!-- fragment -->"


def unchecked_blocks(md, text):
    """file:line of each C++/CMake block that is neither an include nor a marked fragment."""
    found = []
    lines = text.splitlines()
    in_fence = False
    for i, line in enumerate(lines):
        if not line.startswith("```"):
            continue
        if in_fence:
            in_fence = False
            continue
        in_fence = True
        lang = line[3:].strip().lower()
        if lang not in CODE_LANGS:
            continue
        before = lines[i - 1].strip() if i > 0 else ""
        if before == FRAGMENT_MARK or re.fullmatch(r"<!-- include: [^#\s]+#[\w-]+ -->", before):
            continue
        found.append(f"{md.relative_to(ROOT)}:{i + 1}")
    return found


def self_test():
    """The block check itself: what it must flag and what it must let through."""
    sample = "\n".join([
        "<!-- include: samples/x.cpp#r -->", "```cpp", "int a;", "```", "<!-- end include -->",
        "<!-- fragment -->", "```cpp", "f();", "```",
        "```sh", "ls", "```",
        "```cpp", "unmarked();", "```",
        "text", "```c++", "also();", "```",
        "```cmake", "find_package(x)", "```", ""])
    found = unchecked_blocks(ROOT / "self-test.md", sample)
    expected = ["self-test.md:13", "self-test.md:17", "self-test.md:20"]
    return [] if found == expected else [f"self-test of the block check: found {found}, expected {expected}"]


# --- reference pages ---------------------------------------------------------

def strip_comment(line):
    s = line.strip()
    return s[4:] if s.startswith("/// ") else s[3:] if s.startswith("///") else s


def header_reference(path):
    """Markdown for one header: its @file text, then each documented declaration."""
    lines = path.read_text().splitlines()
    name = path.name
    out = [f"# `<coropipe/{name}>`", "",
           f"<!-- Generated from include/coropipe/{name} by scripts/docs.py --update; edit the header, not this page. -->",
           ""]
    i = 0
    depth_detail = 0
    namespace_stack = []
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("namespace detail") or stripped.startswith("namespace coropipe::detail"):
            # Skip the whole detail namespace.
            depth = 0
            while i < len(lines):
                depth += lines[i].count("{") - lines[i].count("}")
                i += 1
                if depth <= 0:
                    break
            continue
        if stripped.startswith("///"):
            doc = []
            while i < len(lines) and lines[i].strip().startswith("///"):
                doc.append(strip_comment(lines[i]))
                i += 1
            if doc and doc[0].startswith("@file"):
                body = [d for d in doc[1:]]
                out.extend(render_doc(body))
                out.append("")
                continue
            decl = []
            while i < len(lines):
                l = lines[i]
                decl.append(l.rstrip())
                i += 1
                s = l.strip()
                if s.endswith(";") or s.endswith("{") or s.endswith("}") or s.endswith(",") or "= default" in s:
                    break
            signature = tidy_declaration(decl)
            if not signature:
                continue
            out.append("```cpp")
            out.append(signature)
            out.append("```")
            out.extend(render_doc(doc))
            out.append("")
            continue
        i += 1
    return "\n".join(out).rstrip() + "\n"


def tidy_declaration(decl):
    text = "\n".join(decl)
    # Drop constructors' member-initializer lists.
    text = re.sub(r"\)(\s*noexcept)?\s*\n?\s*:\s+\w+\(.*$", lambda m: ")" + (m.group(1) or "") + ";", text, flags=re.S)
    # Drop inline bodies: keep what comes before the first "{" of a function body.
    text = re.sub(r"\)\s*(const\s*)?(noexcept\s*)?\{.*$", lambda m: ")" + (" " + m.group(1).strip() if m.group(1) else "") + (" " + m.group(2).strip() if m.group(2) else "") + ";", text, flags=re.S)
    text = re.sub(r"\s*\{\s*$", "", text)
    lines = [l for l in text.splitlines()]
    indent = min((len(l) - len(l.lstrip()) for l in lines if l.strip()), default=0)
    return "\n".join(l[indent:] for l in lines).strip()


def render_doc(doc):
    out = []
    for d in doc:
        if re.match(r"@(param|returns?|throws)\b", d) and out and out[-1] != "":
            out.append("")
        d = re.sub(r"@param (\w+)", r"**Parameter** `\1`:", d)
        d = re.sub(r"@returns?", "**Returns**", d)
        d = re.sub(r"@throws", "**Throws**", d)
        d = re.sub(r"@p (\w+)", r"`\1`", d)
        out.append(d)
    return out


def reference_pages():
    pages = {}
    for header in sorted((ROOT / "include/coropipe").glob("*.hpp")):
        pages[ROOT / "docs/reference" / (header.stem + ".md")] = header_reference(header)
    return pages


# --- README commands ----------------------------------------------------------

def readme_command(kind):
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- command:%s -->\n```sh\n(.*?)\n```" % kind, text)
    if not m or "\n" in m.group(1):
        raise SystemExit(f"docs.py: README.md has no one-line <!-- command:{kind} --> block")
    return m.group(1)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "--check"
    if mode not in ("--check", "--update"):
        raise SystemExit(__doc__)
    stale = []
    unmarked = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if "docs/reference" in str(md):
            continue
        text = md.read_text()
        unmarked += unchecked_blocks(md, text)
        if text.count("<!-- include: ") != len(INCLUDE_RE.findall(text)):
            unmarked.append(f"{md.relative_to(ROOT)}: an <!-- include: --> marker without its block or"
                            " <!-- end include --> (so it is not synced);")
        new = sync_includes(text)
        if new != text:
            stale.append(str(md.relative_to(ROOT)))
            if mode == "--update":
                md.write_text(new)
    for path, text in reference_pages().items():
        if not path.exists() or path.read_text() != text:
            stale.append(str(path.relative_to(ROOT)))
            if mode == "--update":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    problems = self_test()
    test_command = readme_command("test")
    readme_command("sample")
    if test_command not in (ROOT / ".ci/run").read_text():
        problems.append(".ci/run does not run the README's test command verbatim: " + test_command)
    for where in unmarked:
        problems.append(where + ": a code block that is neither included from a compiled file"
                        " (<!-- include: path#region -->) nor marked <!-- fragment -->")
    if mode == "--check" and stale:
        problems.append("out of date (run scripts/docs.py --update): " + ", ".join(stale))
    for p in problems:
        print("docs.py: " + p, file=sys.stderr)
    if mode == "--update" and stale:
        print("docs.py: updated " + ", ".join(stale))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
