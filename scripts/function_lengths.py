#!/usr/bin/env python3
"""Function lengths of rmflow's library and binary (issue #20's measure).

Usage: scripts/function_lengths.py [TOP] [SRC_DIR]
Prints the count, median, 90th percentile, how many functions exceed 50 and 80 lines, and the
TOP longest (default 25). A function's span runs from its `fn` line to the brace that closes it
(braces in strings and comments ignored); `#[cfg(test)]` modules are left out.
"""
import glob
import re
import sys

top = int(sys.argv[1]) if len(sys.argv) > 1 else 25
src = sys.argv[2] if len(sys.argv) > 2 else "src"
FN = re.compile(r"\s*(pub(\([a-z]+\))? )?(const )?(async )?(unsafe )?fn ([A-Za-z_0-9]+)")


def code(line):
    line = re.sub(r'"([^"\\]|\\.)*"', "", line)
    line = re.sub(r"'.'", "", line)
    return line.split("//")[0]


def skip_block(lines, i):
    """Index after the brace-balanced block that starts at or after line i."""
    depth, started = 0, False
    for k in range(i, len(lines)):
        s = code(lines[k])
        depth += s.count("{") - s.count("}")
        started |= "{" in s
        if started and depth <= 0:
            return k + 1
    return len(lines)


spans = []
for path in sorted(glob.glob(f"{src}/**/*.rs", recursive=True)):
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        if re.match(r"\s*#\[cfg\(test\)\]", lines[i]):
            i = skip_block(lines, i + 1)
            continue
        m = FN.match(lines[i])
        if m:
            depth, started, k = 0, False, i
            for k in range(i, len(lines)):
                s = code(lines[k])
                depth += s.count("{") - s.count("}")
                started |= "{" in s
                if (started and depth <= 0) or (not started and s.strip().endswith(";")):
                    break
            spans.append((k - i + 1, path, m.group(6)))
        i += 1
spans.sort(reverse=True)
n = len(spans)
lengths = sorted(s[0] for s in spans)
print(
    f"functions {n}, median {lengths[n // 2]}, p90 {lengths[int(n * 0.9)]}, "
    f"over 50 lines: {sum(x > 50 for x in lengths)}, over 80: {sum(x > 80 for x in lengths)}, "
    f"over 100: {sum(x > 100 for x in lengths)}"
)
for length, path, name in spans[:top]:
    print(f"{length:5}  {path}  {name}")
