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
    leaves out by name (one that uses the engine calls require_docker!() too);
  - every engine test either is in the Podman set (the filter in scripts/test-podman.sh: the
    tests that must pass on Podman) or says why not with `require_docker!(not_podman: "REASON")`
    (a non-empty reason) in place of `require_docker!()` -- never both; and each name of the
    Podman set names an engine test that exists (checked on a full run, without DIRs).
Usage: python3 scripts/check-docker-tests.py [DIR...]   (default: tests src)
       python3 scripts/check-docker-tests.py --self-test
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
# `require_docker!(not_podman: "reason")`: an engine test that is not in the Podman set, and why
NOT_PODMAN = re.compile(r'require_docker!\(\s*not_podman\s*:\s*"((?:\\.|[^"\\])*)"\s*,?\s*\)')
# the entries of the Podman set in scripts/test-podman.sh's FILTER: test(=NAME), test(/REGEX/)
PODMAN_ENTRY = re.compile(r"test\((=[^)\s]+|/[^/]+/)\)")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PODMAN_SCRIPT = os.path.join(ROOT, "scripts", "test-podman.sh")

# comments, raw strings, strings and char literals: blanked before braces are counted
LEXEME = re.compile(
    r'//[^\n]*|/\*.*?\*/|r(#*)".*?"\1|b?"(?:\\.|[^"\\])*"|b?\'(?:\\.|[^\\\'\n])\'', re.S
)


def blank(src):
    """`src` with comments and literals replaced by spaces (newlines kept, offsets kept)."""
    return LEXEME.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), src)


def block_end(code, start):
    """The offset just past the `}` closing the `{` at `start`."""
    depth, i = 0, start
    while True:
        c = code[i]
        depth += (c == "{") - (c == "}")
        i += 1
        if depth == 0:
            return i


def podman_set(script_text):
    """The Podman set of scripts/test-podman.sh: (exact names, regexes)."""
    m = re.search(r"^FILTER='(.*?)'", script_text, re.S | re.M)
    if not m:
        return None
    exact, regexes = set(), []
    for e in PODMAN_ENTRY.findall(m.group(1)):
        if e.startswith("="):
            exact.add(e[1:])
        else:
            regexes.append(e[1:-1])
    return exact, regexes


def in_podman_set(name, podman):
    exact, regexes = podman
    return name in exact or any(re.search(r, name) for r in regexes)


def module_of(path):
    """The test's module path as nextest names it: tests/x.rs -> x, src/a/b.rs -> a::b."""
    rel = os.path.relpath(os.path.abspath(path), ROOT).replace(os.sep, "/")
    parts = rel[: -len(".rs")].split("/")
    if parts[0] in ("tests", "src"):
        parts = parts[1:]
    if parts and parts[-1] in ("mod", "lib", "main", "tests") and (len(parts) > 1 or parts[-1] != "mod"):
        parts = parts[:-1]
    return parts


def check_source(path, src, podman, module=None):
    """(problems, engine tests as {full name: in the Podman set}) of one file's text."""
    code = blank(src)
    problems, engine_tests = [], {}
    line_of = lambda off: src.count("\n", 0, off) + 1
    module = module_of(path) if module is None else module
    # inline `mod name { … }`: a test inside one is named module::name::fn
    mods = []
    for m in re.finditer(r"\bmod\s+(\w+)\s*\{", code):
        mods.append((m.end() - 1, block_end(code, m.end() - 1), m.group(1)))
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
        i = block_end(code, start)
        body = code[start:i]
        name, at = fn.group(1), f"{path}:{line_of(fn.start())}"
        full = "::".join(module + [n for (a, b, n) in mods if a < fn.start() < b] + [name])
        ignored = IGNORE in attrs
        measurement = MEASUREMENT in attrs and name.startswith("measure_")
        if TOUCHES.search(body) and not ignored and not measurement:
            problems.append(f"{at}: test `{name}` touches the Docker engine but lacks `{IGNORE}`")
        if measurement and TOUCHES.search(body) and "require_docker!" not in body:
            problems.append(f"{at}: measurement `{name}` touches the Docker engine but never calls require_docker!()")
        if ignored and "require_docker!" not in body:
            problems.append(f"{at}: test `{name}` is ignored for the engine but never calls require_docker!()")
        if not ignored:
            continue
        # the macro's own text (a string literal) is blanked in `code`: read it from `src`
        calls = [NOT_PODMAN.match(src, start + c.start()) for c in re.finditer(r"require_docker!", body)]
        marks = [c for c in calls if c]
        why = marks[0].group(1).strip() if marks else None
        listed = podman is not None and in_podman_set(full, podman)
        engine_tests[full] = listed
        if "require_docker!(not_podman" in re.sub(r"\s", "", src[start:i]) and not marks:
            problems.append(f"{at}: test `{name}`: write the marker as require_docker!(not_podman: \"REASON\")")
        if why == "":
            problems.append(f"{at}: test `{name}` is marked not_podman with an empty reason")
        if podman is None:
            continue
        if listed and marks:
            problems.append(
                f"{at}: test `{full}` is in the Podman set (scripts/test-podman.sh) but marked not_podman"
            )
        if not listed and not marks:
            problems.append(
                f"{at}: engine test `{full}` is neither in the Podman set (scripts/test-podman.sh) "
                f'nor marked require_docker!(not_podman: "REASON")'
            )
    return problems, engine_tests


def check(path, podman):
    return check_source(path, open(path, encoding="utf-8").read(), podman)


def stale_entries(podman, names):
    """Entries of the Podman set that name no engine test (a renamed or removed test)."""
    exact, regexes = podman
    stale = [f"test(={n})" for n in sorted(exact) if n not in names]
    stale += [f"test(/{r}/)" for r in regexes if not any(re.search(r, n) for n in names)]
    return stale


def self_test():
    """The checker's own cases, on sources written here (no file is read)."""
    podman = podman_set("FILTER='\n  test(=x::in_set)\n| test(/^x::pod_/)\n'\n")
    engine = '#[test]\n#[ignore = "needs the Docker engine: run scripts/test.sh"]\nfn {name}() {{\n    {call};\n}}\n'
    cases = [
        # (fn name, first line of the body, problems expected)
        ("in_set", "require_docker!()", 0),
        ("pod_by_regex", "require_docker!()", 0),
        ("not_listed", "require_docker!()", 1),
        ("not_listed", 'require_docker!(not_podman: "Podman has no Swarm")', 0),
        ("not_listed", 'require_docker!(not_podman: "  ")', 1),
        ("in_set", 'require_docker!(not_podman: "a reason")', 1),
        ("not_listed", 'require_docker!(not_podman = "bad form")', 2),
    ]
    failed = 0
    for name, call, want in cases:
        got, tests = check_source("x.rs", engine.format(name=name, call=call), podman, ["x"])
        if len(got) != want or f"x::{name}" not in tests:
            failed += 1
            print(f"self-test: {name} with {call}: want {want} problem(s), got {got}", file=sys.stderr)
    nested = "mod inner {\n" + engine.format(name="t", call="require_docker!()") + "}\n"
    _, tests = check_source("x.rs", nested, podman, ["x"])
    if list(tests) != ["x::inner::t"]:
        failed += 1
        print(f"self-test: a test in an inline module is named {list(tests)}", file=sys.stderr)
    if stale_entries(podman, {"x::in_set"}) != ["test(/^x::pod_/)"]:
        failed += 1
        print("self-test: a Podman-set entry naming no test is not reported", file=sys.stderr)
    if failed:
        sys.exit(1)
    print(f"check-docker-tests: self-test passed ({len(cases) + 2} cases)")


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    dirs = sys.argv[1:] or [os.path.join(ROOT, "tests"), os.path.join(ROOT, "src")]
    podman = podman_set(open(PODMAN_SCRIPT, encoding="utf-8").read())
    problems, tests = [], {}
    if podman is None:
        problems.append(f"{PODMAN_SCRIPT}:1: no FILTER='…' (the Podman set) found")
    for d in dirs:
        for dirpath, _, files in os.walk(d):
            for f in sorted(files):
                if f.endswith(".rs"):
                    p = os.path.join(dirpath, f)
                    found, t = check(p, podman)
                    problems += found
                    tests.update(t)
    if podman is not None and not sys.argv[1:]:
        for e in stale_entries(podman, set(tests)):
            problems.append(f"{PODMAN_SCRIPT}:1: the Podman set's {e} names no engine test")
    for p in problems:
        print(f"check-docker-tests: {os.path.relpath(p.split(':')[0], ROOT)}:{p.split(':', 1)[1]}", file=sys.stderr)
    if problems:
        print(f"check-docker-tests: {len(problems)} problem(s)", file=sys.stderr)
        sys.exit(1)
    on_podman = sum(tests.values())
    print(
        f"check-docker-tests: {len(tests)} engine tests, each #[ignore]d and calling require_docker!(); "
        f"{on_podman} in the Podman set, {len(tests) - on_podman} marked not_podman with a reason"
    )


if __name__ == "__main__":
    main()
