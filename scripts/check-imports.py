#!/usr/bin/env python3
"""The house's import rules, checked on src/ (run by CI).

Builds the graph of top-level modules (src/X.rs and src/X/...) from every `crate::X` path in
code (comments and doc comments are skipped), then fails when
  - two or more modules form an import cycle (each strongly connected component is printed), or
  - a module imports one the house forbids it (docs/architecture.md lists them).
Usage: python3 scripts/check-imports.py [SRC_DIR]
"""
import os
import re
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")

# module -> modules it must never import
FORBIDDEN = {
    "cli": "*",
    "reconcile": "*",
    "shown": "*",
    "tag": "*",
    "config": {"sync", "watch", "setup", "verify", "notify"},
    "notify": {"sync", "watch", "setup", "verify", "cli"},
    "cloudflare": {"cli", "config", "sync", "watch", "setup", "verify", "notify"},
    "infisical": {"cli", "config", "sync", "watch", "setup", "verify", "notify"},
    "docker": {"cli", "config", "sync", "watch", "setup", "verify", "notify"},
    "sink": {"cli", "config", "sync", "watch", "setup", "verify", "notify"},
    "exec": {"cli", "config", "sync", "watch", "setup", "verify", "notify"},
    "sync": {"cli"},
    "watch": {"cli"},
    "setup": {"cli"},
    "verify": {"cli"},
}

PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
USE_GROUP = re.compile(r"\buse\s+crate::\{([^;]*)\}", re.S)


def top_module(rel):
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def strip_comments(text):
    out = []
    for line in text.splitlines():
        s = line.lstrip()
        if s.startswith("//"):
            continue
        # trailing comments
        i = line.find("//")
        if i >= 0 and '"' not in line[:i]:
            line = line[:i]
        out.append(line)
    return "\n".join(out)


def graph(src):
    edges = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)
            mod = top_module(rel)
            if mod in ("main", "lib"):
                continue
            text = strip_comments(open(path, encoding="utf-8").read())
            deps = set(PATH.findall(text))
            for group in USE_GROUP.findall(text):
                for item in re.split(r",", re.sub(r"\{[^{}]*\}", "", group)):
                    name = item.strip().split("::")[0].strip()
                    if re.fullmatch(r"[a-z_][a-z0-9_]*", name or ""):
                        deps.add(name)
            deps.discard(mod)
            deps.discard("self")
            edges.setdefault(mod, set()).update(deps)
    mods = set(edges)
    return {m: {d for d in ds if d in mods} for m, ds in edges.items()}


def sccs(g):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def main():
    g = graph(SRC)
    bad = 0
    for comp in sccs(g):
        if len(comp) > 1:
            bad += 1
            print(f"import cycle ({len(comp)} modules): {', '.join(comp)}")
    for mod, rule in FORBIDDEN.items():
        deps = g.get(mod, set())
        banned = deps if rule == "*" else deps & rule
        for d in sorted(banned):
            bad += 1
            print(f"forbidden import: {mod} -> {d}")
    if bad:
        print(f"check-imports: {bad} problem(s) in {SRC}")
        return 1
    print(f"check-imports: {len(g)} modules, no cycle, no forbidden import")
    return 0


if __name__ == "__main__":
    sys.exit(main())
