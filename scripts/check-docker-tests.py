#!/usr/bin/env python3
"""Tests that need the Docker engine are skipped, never passed, when it is not used (run by
scripts/test.sh, so by CI).

In every .rs file under tests/ and src/, for each test function (`#[test]`, `#[tokio::test]`):
  - a test whose body touches the engine (`require_docker!`, `Docker::new()`,
    `Command::new("docker")`) must carry `#[ignore = "needs the Docker engine: run scripts/test.sh"]`;
  - a test carrying that attribute must call `require_docker!()` (so it fails, saying why, when
    it runs without an engine, instead of returning early and counting as passed);
  - no test is `#[ignore]`d for any other reason: scripts/test.sh runs every ignored test
    (`--run-ignored all`), so another ignore would start running there unnoticed. The one
    exception: a measurement named `measure_*` with the MEASUREMENT reason, which test.sh
    leaves out by name (one that uses the engine calls require_docker!() too).
Usage: python3 scripts/check-docker-tests.py [DIR...]   (default: tests src)
"""
import os
import re
import sys

IGNORE = '#[ignore = "needs the Docker engine: run scripts/test.sh"]'
# Measurements for BENCHMARKS.md, run by hand; scripts/test.sh leaves them out by name
# (`measure_*`), so --run-ignored all never runs them in CI.
MEASUREMENT = '#[ignore = "a measurement, minutes of I/O: run by hand for BENCHMARKS.md"]'
TOUCHES = re.compile(r'require_docker!|\bDocker::new\(\)|Command::new\("docker"\)')
TEST_ATTR = re.compile(r"#\[(tokio::)?test\b")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DIRS = sys.argv[1:] or [os.path.join(ROOT, "tests"), os.path.join(ROOT, "src")]

# comments, raw strings, strings and char literals: blanked before braces are counted
LEXEME = re.compile(
    r'//[^\n]*|/\*.*?\*/|r(#*)".*?"\1|b?"(?:\\.|[^"\\])*"|b?\'(?:\\.|[^\\\'\n])\'', re.S
)


def blank(src):
    """`src` with comments and literals replaced by spaces (newlines kept, offsets kept)."""
    return LEXEME.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), src)


def check(path):
    """(problems, number of engine tests) of one file."""
    src = open(path, encoding="utf-8").read()
    code = blank(src)
    problems, engine_tests = [], 0
    line_of = lambda off: src.count("\n", 0, off) + 1
    # every #[ignore...] anywhere must be the Docker one
    for m in re.finditer(r"#\[ignore\b", code):
        end = src.index("]", m.start()) + 1
        if src[m.start() : end] == MEASUREMENT:
            fn = re.compile(r"\bfn\s+(\w+)").search(code, end)
            if fn and fn.group(1).startswith("measure_"):
                continue
        if src[m.start() : end] != IGNORE:
            problems.append(f"{path}:{line_of(m.start())}: {src[m.start():end]} is not `{IGNORE}`")
    # each test: the attributes above its fn, and its body
    for m in TEST_ATTR.finditer(code):
        fn = re.compile(r"\bfn\s+(\w+)").search(code, m.end())
        if not fn:
            continue
        attrs = src[m.start() : fn.start()]
        if "\n\n" in attrs.strip() or "{" in code[m.end() : fn.start()]:
            continue  # not this attribute's fn
        # include attributes written above #[test] (up to a blank line or the previous item)
        before = src[: m.start()].rstrip(" ").split("\n")
        above = []
        for l in reversed(before[:-1]):
            if l.strip().startswith("#["):
                above.append(l)
            else:
                break
        attrs = "\n".join(above) + "\n" + attrs
        start = code.index("{", fn.end())
        depth, i = 0, start
        while True:
            c = code[i]
            depth += (c == "{") - (c == "}")
            i += 1
            if depth == 0:
                break
        body = code[start:i]
        name, at = fn.group(1), f"{path}:{line_of(fn.start())}"
        ignored = IGNORE in attrs
        measurement = MEASUREMENT in attrs and name.startswith("measure_")
        engine_tests += ignored
        if TOUCHES.search(body) and not ignored and not measurement:
            problems.append(f"{at}: test `{name}` touches the Docker engine but lacks `{IGNORE}`")
        if measurement and TOUCHES.search(body) and "require_docker!" not in body:
            problems.append(f"{at}: measurement `{name}` touches the Docker engine but never calls require_docker!()")
        if ignored and "require_docker!" not in body:
            problems.append(f"{at}: test `{name}` is ignored for the engine but never calls require_docker!()")
    return problems, engine_tests


def main():
    problems, tests = [], 0
    for d in DIRS:
        for dirpath, _, files in os.walk(d):
            for f in sorted(files):
                if f.endswith(".rs"):
                    p = os.path.join(dirpath, f)
                    found, n = check(p)
                    problems += found
                    tests += n
    for p in problems:
        print(f"check-docker-tests: {os.path.relpath(p.split(':')[0], ROOT)}:{p.split(':', 1)[1]}", file=sys.stderr)
    if problems:
        print(f"check-docker-tests: {len(problems)} problem(s)", file=sys.stderr)
        sys.exit(1)
    print(f"check-docker-tests: {tests} engine tests, each #[ignore]d and calling require_docker!()")


if __name__ == "__main__":
    main()
