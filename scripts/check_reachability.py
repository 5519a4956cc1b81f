#!/usr/bin/env python3
"""Nothing in the product is reached only from tests: a reachability check from the entry points.

Entry points (what the product runs):
- the DAG files (dags/*.py) and the Airflow plugin package (plugins/hailo_airflow/__init__.py);
- the console scripts of pyproject.toml and sidecar/pyproject.toml (`hailo-release`, the sidecar);
- every `python -m <module>` in the shipped scripts, units, compose files, Dockerfiles and workflows;
- files the product ships by name (e.g. the device agent, copied to the Pi as `device_agent.py`).

Two passes, both over the product's own sources only (tests/ and bench/ never count as a use):
1. modules: the import graph (module-level and function-local imports) from the entry points; a
   module of release/, plugins/ or the sidecar that is not reached is reported;
2. names: every top-level function and class, and every public method, of a reached module must be
   named somewhere else in reached product code (a call, an attribute, a decorator, or a string such
   as a dotted callable path). Like vulture this is name-based, so a name shared by two definitions
   counts for both; it errs towards "used", never towards a false report.

Why not vulture: it reports unused code per file, not "reached only from tests", and has no notion of
entry points; its whitelists would have to list every pydantic validator and framework hook by file.
The allow-list here (scripts/reachability_allow.txt) names each exception with its reason.

    python scripts/check_reachability.py [--root DIR]   # exit 1 and a list when something is unreached
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

PACKAGES = {"release": "release", "hailo_airflow": "plugins/hailo_airflow", "hailo_sidecar": "sidecar/hailo_sidecar"}
ENTRY_GLOBS = ("dags/*.py", "plugins/hailo_airflow/__init__.py")
# Files whose `python -m X` / `X:main` lines are part of the product.
LAUNCH_GLOBS = ("scripts/*.sh", "runner/**/*", "docker/**/*", ".github/**/*", "release/data/**/*", "sidecar/Dockerfile*",
                "pyproject.toml", "sidecar/pyproject.toml", "README.md")
# Methods a framework calls by name (pydantic, Airflow, http.server, argparse actions, context managers).
FRAMEWORK_NAMES = frozenset({
    "execute", "execute_complete", "get_link", "on_kill", "render_template_fields", "do_GET", "do_POST", "do_HEAD",
    "log_message", "handle", "run", "model_post_init", "model_config", "get_conn", "get_ui_field_behaviour",
    "get_connection_form_widgets", "poke", "collect", "serialize", "__call__", "dispatch", "setup", "main",
})
VALIDATOR_DECORATORS = frozenset({"field_validator", "model_validator", "validator", "root_validator", "field_serializer",
                                  "model_serializer", "computed_field", "cached_property", "property", "setter",
                                  "hookimpl", "task", "dag", "app.get", "app.post", "get", "post", "exception_handler",
                                  "middleware", "on_event", "staticmethod", "classmethod", "abstractmethod"})


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for the product packages and the DAG files."""
    out: dict[str, Path] = {}
    for pkg, rel in PACKAGES.items():
        base = root / rel
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" in path.parts or "build" in path.relative_to(root).parts[:2]:
                continue
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = path
    for path in sorted((root / "dags").glob("*.py")):
        out[f"dags.{path.stem}"] = path
    return out


def _imports(tree: ast.AST, modname: str, modules: dict[str, Path]) -> Iterator[str]:
    pkg = modname.rsplit(".", 1)[0] if not modname.endswith("__init__") else modname
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _resolve(alias.name, modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = modname.split(".")
                anchor = anchor[: len(anchor) - node.level] if modules.get(modname, Path()).name != "__init__.py" \
                    else anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield from _resolve(base, modules)
            for alias in node.names:
                yield from _resolve(f"{base}.{alias.name}", modules)
    del pkg


def _resolve(dotted: str, modules: dict[str, Path]) -> Iterator[str]:
    """A dotted import reaches that module and every package on its way."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name in modules:
            yield name


def entry_modules(root: Path, modules: dict[str, Path]) -> set[str]:
    entries = {m for m, p in modules.items() if any(p.match(str(root / g)) or p in root.glob(g) for g in ENTRY_GLOBS)}
    # `python -m X`, exec-form `"-m", "X"`, and console scripts `name = "X:main"`.
    launched = re.compile(r"(?:-m\s+|\"-m\",\s*\"|=\s*\"?)([A-Za-z_][\w.]*)(?::\w+)?")
    for pattern in LAUNCH_GLOBS:
        for path in root.glob(pattern):
            if not path.is_file() or path.suffix in {".pyc", ".png"}:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            for match in launched.finditer(text):
                entries.update(_resolve(match.group(1), modules))
                if f"{match.group(1)}.__main__" in modules:  # `python -m package` runs its __main__
                    entries.add(f"{match.group(1)}.__main__")
    return entries


def _strings(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def reached_modules(root: Path, modules: dict[str, Path], trees: dict[str, ast.AST]) -> set[str]:
    by_filename = {p.name: m for m, p in modules.items() if p.name != "__init__.py"}
    seen: set[str] = set()
    todo = sorted(entry_modules(root, modules))
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        edges = set(_imports(trees[mod], mod, modules))
        # Files shipped by name (the device agent and its siblings are copied to the device).
        for s in _strings(trees[mod]):
            for token in re.findall(r"[\w.]+\.py\b", s):
                if token.rsplit("/", 1)[-1] in by_filename:
                    edges.add(by_filename[token.rsplit("/", 1)[-1]])
            edges.update(_resolve(s, modules) if re.fullmatch(r"[A-Za-z_][\w.]*", s) else ())
        todo.extend(sorted(edges - seen))
    return seen


def _decorator_names(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> set[str]:
    names = set()
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        names.add(ast.unparse(target))
        if isinstance(target, ast.Attribute):
            names.add(target.attr)
    return names


def definitions(tree: ast.Module) -> Iterator[tuple[str, int]]:
    """Top-level functions and classes, and public methods of top-level classes."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name, node.lineno
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("__"):
                    if _decorator_names(item) & VALIDATOR_DECORATORS and not (_decorator_names(item) <= {"staticmethod",
                                                                                                           "classmethod"}):
                        continue
                    yield f"{node.name}.{item.name}", item.lineno


def used_names(trees: Iterable[ast.AST]) -> dict[str, int]:
    """How often each identifier is named in the given code (definitions themselves excluded)."""
    counts: dict[str, int] = {}

    def add(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1

    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                add(node.id)
            elif isinstance(node, ast.Attribute):
                add(node.attr)
            elif isinstance(node, ast.alias):
                add(node.name.rsplit(".", 1)[-1])
                if node.asname:
                    add(node.asname)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                for token in re.findall(r"[A-Za-z_]\w*", node.value):
                    add(token)
    return counts


def load_allow(path: Path) -> dict[str, str]:
    allow: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            entry, _, reason = line.partition("#")
            if entry.strip():
                if not reason.strip():
                    raise SystemExit(f"{path}: '{entry.strip()}' has no reason (write: module:name  # why)")
                allow[entry.strip()] = reason.strip()
    return allow


def check(root: Path, allow: dict[str, str]) -> list[str]:
    modules = module_files(root)
    trees: dict[str, ast.AST] = {m: ast.parse(p.read_text(encoding="utf-8"), str(p)) for m, p in modules.items()}
    reached = reached_modules(root, modules, trees)
    problems = [f"{m}: module not reached from any entry point ({modules[m].relative_to(root)})"
                for m in sorted(set(modules) - reached) if m not in allow and not m.startswith("dags.")]
    counts = used_names(trees[m] for m in reached)
    for mod in sorted(reached):
        tree = trees[mod]
        assert isinstance(tree, ast.Module)
        for qualname, lineno in definitions(tree):
            leaf = qualname.rsplit(".", 1)[-1]
            if leaf in FRAMEWORK_NAMES or f"{mod}:{qualname}" in allow:
                continue
            # The definition itself is not an ast.Name; a use anywhere in reached product code counts.
            if counts.get(leaf, 0) == 0:
                problems.append(f"{mod}:{qualname} (line {lineno}) is defined but never used by product code")
    problems.extend(f"{entry}: allow-list entry matches nothing" for entry in sorted(allow)
                    if entry.split(":")[0] not in modules)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--allow", type=Path, default=None, help="allow-list (default: scripts/reachability_allow.txt)")
    args = parser.parse_args(argv)
    allow = load_allow(args.allow or args.root / "scripts" / "reachability_allow.txt")
    problems = check(args.root, allow)
    for line in problems:
        print(line)
    print(f"reachability: {len(problems)} finding(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
