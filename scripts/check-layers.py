#!/usr/bin/env python3
"""The module import graph of authgate's crates: prints it, and fails when
two modules import each other (directly or through others) or when a module
other than a composition root (the server's `server` and `cli`, the Envoy
module's `settings` and `load`) imports `config`.

Reads `use crate::x` and `crate::x::` paths (and `authgate_core::x` from the
server and module crates) outside `#[cfg(test)]` modules. Usage:
scripts/check-layers.py [--dot]
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = [ROOT / "crates" / "core" / "src", ROOT / "src", ROOT / "envoy" / "module" / "src"]
ALLOWED_CONFIG_IMPORTERS = {"server", "cli", "settings", "load"}


def top_module(src: pathlib.Path, path: pathlib.Path) -> str:
    rel = path.relative_to(src)
    return rel.parts[0].removesuffix(".rs")


def strip_tests(text: str) -> str:
    # Unit tests may build what they test from a config; they are not layers.
    m = re.search(r"^#\[cfg\(test\)\]\s*\nmod tests\b", text, re.M)
    return text[: m.start()] if m else text


def graph():
    edges = {}
    for src in CRATES:
        if not src.exists():
            continue
        for path in src.rglob("*.rs"):
            module = top_module(src, path)
            if module in ("lib", "main"):
                continue
            text = strip_tests(path.read_text())
            # Paths in comments (doc links) are not imports.
            text = re.sub(r"//[^\n]*", "", text)
            if path.name == "tests.rs":
                continue
            found = set(re.findall(r"\b(?:crate|authgate_core)::([a-z_][a-z0-9_]*)", text))
            # `use crate::{a, b::C}` groups.
            for group in re.findall(r"\buse (?:crate|authgate_core)::\{([^}]*)\}", text, re.S):
                found |= set(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
            found.discard(module)
            edges.setdefault(module, set()).update(found)
    return edges


def cycles(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in edges:
                continue
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
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    edges = graph()
    if "--dot" in sys.argv:
        print("digraph authgate {")
        for a in sorted(edges):
            for b in sorted(edges[a]):
                if b in edges:
                    print(f'  "{a}" -> "{b}";')
        print("}")
        return 0
    for a in sorted(edges):
        deps = sorted(b for b in edges[a] if b in edges)
        print(f"{a:14} -> {', '.join(deps)}")
    failed = False
    for c in cycles(edges):
        print(f"error: import cycle between {', '.join(c)}", file=sys.stderr)
        failed = True
    for a in sorted(edges):
        if "config" in edges[a] and a != "config" and a not in ALLOWED_CONFIG_IMPORTERS:
            print(f"error: {a} imports config (only {', '.join(sorted(ALLOWED_CONFIG_IMPORTERS))} may)", file=sys.stderr)
            failed = True
    print("layers: " + ("FAILED" if failed else "ok, no cycle"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
