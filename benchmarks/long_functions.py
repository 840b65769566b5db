"""Functions in ``dapt_core/`` longer than a limit (60 lines by default), longest first.

Usage: python3 benchmarks/long_functions.py [--max 60] [--root dapt_core]

A function's length is ``end_lineno - lineno + 1`` of its ``def`` node (decorators not counted, docstring and
nested functions included); methods and nested functions are listed under their qualified name. The code is
parsed, never imported. Prints one line per long function, then one JSON line with the same rows.
"""

from __future__ import annotations

import argparse
import ast
import json
from collections.abc import Iterator
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_MAX_LINES = 60  # "no function over about 60 lines without a reason in its docstring" (team standards)


def functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function under ``tree`` with its qualified name (``Class.method``, ``outer.inner``)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + node.name
            yield name, node
            yield from functions(node, name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, prefix + node.name + ".")
        else:
            yield from functions(node, prefix)


def long_functions(root: Path, max_lines: int) -> list[dict]:
    """Rows ``{"path", "line", "name", "lines"}`` of the functions over ``max_lines``, longest first."""
    rows = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, node in functions(tree):
            length = node.end_lineno - node.lineno + 1
            if length > max_lines:
                shown = path.relative_to(PROJECT_DIR) if path.is_relative_to(PROJECT_DIR) else path
                rows.append({"path": str(shown), "line": node.lineno, "name": name, "lines": length})
    return sorted(rows, key=lambda r: (-r["lines"], r["path"], r["line"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=DEFAULT_MAX_LINES, help="longest length that is not listed")
    parser.add_argument("--root", type=Path, default=PROJECT_DIR / "dapt_core", help="folder to scan")
    args = parser.parse_args()
    if args.max < 1:
        parser.error(f"--max must be >= 1, got {args.max}")
    if not args.root.is_dir():
        parser.error(f"--root is not a folder: {args.root}")
    rows = long_functions(args.root.resolve(), args.max)
    for r in rows:
        print(f"{r['lines']:4d}  {r['path']}:{r['line']}  {r['name']}")
    print(f"{len(rows)} functions over {args.max} lines")
    print(json.dumps({"max_lines": args.max, "functions": rows}))


if __name__ == "__main__":
    main()
