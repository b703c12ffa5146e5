"""Regenerate every table of measured numbers in docs/*.md from its JSON file in docs/results/.

A page marks a table with two comments; everything between them is replaced:

    <!-- results:NAME -->
    (generated: the table of docs/results/NAME.json and a one-line caption saying which
    machine, CPU flags, commit and command produced it)
    <!-- /results:NAME -->

The JSON files are written by benchmarks/results.py (or transcribed by hand, with the
commit and machine they came from). Usage:

    python docs/render_tables.py            # rewrite the tables in place
    python docs/render_tables.py --check    # exit 1 if that would change a file (CI)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
REQUIRED = ("title", "command", "machine", "commit", "columns", "rows", "notes")
MACHINE_KEYS = ("cpu", "cores", "cpu_flags", "gpu", "python")
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


class ResultError(Exception):
    """A results file that cannot be rendered: the message is one line."""


def load(path: Path) -> dict[str, Any]:
    """Read and check one results file (required keys, one cell per column in every row)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultError(f"{path}: no such results file") from None
    except json.JSONDecodeError as e:
        raise ResultError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(record, dict):
        raise ResultError(f"{path}: expected a JSON object")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ResultError(f"{path}: missing key(s) {', '.join(missing)}")
    machine = record["machine"]
    if not isinstance(machine, dict) or [k for k in MACHINE_KEYS if k not in machine]:
        keys = [k for k in MACHINE_KEYS if not isinstance(machine, dict) or k not in machine]
        raise ResultError(f"{path}: machine is missing key(s) {', '.join(keys)}")
    columns = record["columns"]
    for i, row in enumerate(record["rows"]):
        if not isinstance(row, list) or len(row) != len(columns):
            raise ResultError(
                f"{path}: row {i} has {len(row) if isinstance(row, list) else 'no'} cells for {len(columns)} columns"
            )
    return record


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    return " ".join(text.split()).replace("|", "\\|")


def machine_text(machine: dict[str, Any]) -> str:
    parts = [str(machine["cpu"])]
    if machine.get("cores"):
        parts[0] += f", {machine['cores']} cores"
    flags = machine.get("cpu_flags")
    parts.append(
        "CPU flags: " + (", ".join(flags) if flags else "none of avx512f, avx512_bf16, amx")
        if flags is not None
        else "CPU flags: not recorded"
    )
    if machine.get("gpu"):
        parts.append(f"GPU: {machine['gpu']}")
    if machine.get("python"):
        parts.append(f"Python {machine['python']}")
    return "; ".join(parts)


def caption(record: dict[str, Any]) -> str:
    """The provenance line under a table: machine, flags, commit, command (and the notes)."""
    command = " ; ".join(line.strip() for line in str(record["command"]).splitlines() if line.strip())
    text = (
        f"*{record['title']}.* Machine: {machine_text(record['machine'])}. Commit `{record['commit']}`. "
        f"Command: `{command}`."
    )
    if record["notes"]:
        text += " " + " ".join(str(record["notes"]).split())
    return text


def table(record: dict[str, Any]) -> str:
    columns = record["columns"]
    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in record["rows"]]
    return "\n".join(lines)


def render_block(name: str, results: Path) -> str:
    record = load(results / f"{name}.json")
    return f"\n{table(record)}\n\n{caption(record)}\n\n"


def render_page(text: str, results: Path) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render_block(m.group("name"), results) + m.group(4), text)


def run(docs: Path = DOCS, check: bool = False) -> int:
    """Render every page under `docs`; with `check`, change nothing and return 1 when a page
    is out of date. Raises ResultError for a results file that cannot be rendered."""
    results, stale = docs / "results", []
    for page in sorted(docs.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        new = render_page(text, results)
        if new != text:
            stale.append(page)
            if not check:
                page.write_text(new, encoding="utf-8")
    if check and stale:
        names = ", ".join(str(p.relative_to(docs.parent)) for p in stale)
        print(
            f"error: tables out of date with docs/results/ in {names}: run python docs/render_tables.py",
            file=sys.stderr,
        )
        return 1
    if not check:
        print(f"rendered {len(stale)} page(s)" if stale else "every table is up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if regenerating would change a file")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the docs folder (default: this script's)")
    args = parser.parse_args(argv)
    try:
        return run(args.docs, args.check)
    except ResultError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
