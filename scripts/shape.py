#!/usr/bin/env python3
"""Checks the library's shape, as docs/ARCHITECTURE.md states it:

- no cycle between the top-level modules of src/ (test code aside);
- no source file over 1,000 lines.

Prints the modules in layer order (each after every module it uses).
Exit 1 on a violation. Run from anywhere: `python3 scripts/shape.py`.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAX_LINES = 1000
TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(pub(\(crate\))? )?mod tests")
TEST_FILE = re.compile(r"(^|_)tests?\.rs$|testkit|testsource|testutil|proptests")


def top_module(path):
    parts = os.path.relpath(path, SRC).split(os.sep)
    if parts[0] in ("lib.rs", "main.rs", "cli"):
        return None  # the crate root and the binary's CLI sit above everything
    return parts[0].removesuffix(".rs")


def main():
    edges, problems = {}, []
    for dirpath, _, files in os.walk(SRC):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            text = open(path, encoding="utf-8").read()
            lines = text.count("\n")
            if lines > MAX_LINES:
                problems.append(f"{os.path.relpath(path, SRC)}: {lines} lines (over {MAX_LINES})")
            module = top_module(path)
            if module is None or TEST_FILE.search(name) or "tests" in dirpath.split(os.sep):
                continue
            cut = TEST_MOD.search(text)
            if cut:
                text = text[: cut.start()]
            for used in re.findall(r"crate::([a-z_]+)", text):
                if used != module:
                    edges.setdefault(module, set()).add(used)
    order, state = [], {}

    def visit(module, stack):
        if state.get(module) == "done":
            return
        if state.get(module) == "open":
            cycle = stack[stack.index(module):] + [module]
            problems.append("module cycle: " + " -> ".join(cycle))
            return
        state[module] = "open"
        for used in sorted(edges.get(module, ())):
            visit(used, stack + [module])
        state[module] = "done"
        order.append(module)

    for module in sorted(set(edges) | {u for us in edges.values() for u in us}):
        visit(module, [])
    print("layers: " + " < ".join(order))
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
