#!/usr/bin/env python3
"""Import cycles between the files of src/: which file names which, and every cycle.

A file A depends on file B when A names an item of B's module (`use crate::x::y::Z;`,
`use super::{y, z};`, an inline `crate::x::f()`), B being the file that declares the longest
named module path. A module's own children do not count as its dependencies (`mod.rs`
declaring `pub mod y;` does not depend on y). Prints each strongly connected group of files
that name each other; exits 1 when there is one.

  python3 scripts/import-cycles.py [src]
"""

import os
import re
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else "src"


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


files = {}
for root, _, names in os.walk(SRC):
    for n in names:
        if n.endswith(".rs"):
            p = os.path.join(root, n)
            if n == "main.rs" and root == SRC:
                continue  # the binary: a crate of its own
            files[module_of(p)] = p


def strip(text):
    # Inline test modules (at the end of a file) name their file's module as `super`.
    text = re.split(r"#\[cfg\(test\)\]\s*mod \w+\s*\{", text)[0]
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    return text


def use_paths(tree, prefix=()):
    """Expands a use tree (`a::{b, c::{d, e}}`) into paths."""
    tree = tree.strip()
    m = re.match(r"^([\w:]*?)(?:::)?\{(.*)\}$", tree, re.S)
    if m:
        head = tuple(x for x in m.group(1).split("::") if x)
        depth, part, parts = 0, "", []
        for ch in m.group(2):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(part)
                part = ""
            else:
                part += ch
        parts.append(part)
        out = []
        for p in parts:
            if p.strip():
                out += use_paths(p, prefix + head)
        return out
    tree = re.sub(r"\s+as\s+\w+$", "", tree)
    return [prefix + tuple(x for x in tree.split("::") if x)]


def resolve(module, path):
    """The absolute module path `path` (as written in `module`) names, or None."""
    if not path:
        return None
    if path[0] == "crate":
        absolute = path[1:]
    elif path[0] in ("super", "self"):
        base = list(module)
        while path and path[0] in ("super", "self"):
            if path[0] == "super":
                base = base[:-1]
            path = path[1:]
        absolute = tuple(base) + tuple(path)
    else:
        return None
    for n in range(len(absolute), -1, -1):
        if absolute[:n] in files:
            return absolute[:n]
    return None


edges = {m: set() for m in files}
for module, path in files.items():
    text = strip(open(path).read())
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths += use_paths(m.group(1))
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text):
        paths.append(tuple(m.group(1).split("::")))
    for p in paths:
        target = resolve(module, p)
        # A module's own children, and the module itself, do not count.
        if target is None or target == module or target[: len(module)] == module:
            continue
        edges[module].add(target)

# Tarjan's strongly connected components.
index, low, on, stack, groups, counter = {}, {}, set(), [], [], [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        group = []
        while True:
            w = stack.pop()
            on.discard(w)
            group.append(w)
            if w == v:
                break
        if len(group) > 1:
            groups.append(group)


sys.setrecursionlimit(10000)
for v in files:
    if v not in index:
        visit(v)

name = lambda m: os.path.relpath(files[m], SRC)
for g in groups:
    members = sorted(g, key=name)
    print(f"cycle of {len(g)} files: " + ", ".join(name(m) for m in members))
    for m in members:
        inside = sorted(name(t) for t in edges[m] if t in g)
        print(f"  {name(m)} -> {', '.join(inside)}")
print(f"{len(files)} files, {sum(len(e) for e in edges.values())} file dependencies, "
      f"{len(groups)} cycles")
sys.exit(1 if groups else 0)
