"""Write a measurement as a JSON file under docs/results/, with what produced it.

Every table of numbers in docs/ is generated from one of these files (docs/render_tables.py),
so a table always says which machine, CPU flags, commit and command measured it:

    from results import write_result   # benchmarks/ is on sys.path when a benchmark runs
    write_result("import_time", title="...", columns=["command", "median s"], rows=[["--help", 0.7]])
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "docs" / "results"
# the CPU flags that decide which precision and kernels a run gets
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")


def cpu_info() -> dict[str, Any]:
    """Model name, core count and the flags of interest (Linux /proc/cpuinfo; else platform)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "cpu_flags": [f for f in FLAGS_OF_INTEREST if f in flags]}


def gpu_info() -> str | None:
    """The CUDA device's name when torch is already imported and sees one (never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return None


def git_commit() -> str:
    """`<short sha>` of HEAD, with `-dirty` when tracked files differ from it; $PNEUMONIA_COMMIT
    when set (a copy of the tree without .git, as on a lent GPU machine)."""
    if os.environ.get("PNEUMONIA_COMMIT"):
        return os.environ["PNEUMONIA_COMMIT"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_result(
    name: str,
    *,
    title: str,
    columns: list[str],
    rows: list[list[Any]],
    notes: str = "",
    command: str | None = None,
    extra: dict[str, Any] | None = None,
    out_dir: Path | None = None,
) -> Path:
    """docs/results/<name>.json: title, command, machine (CPU, cores, flags, GPU), commit,
    columns and rows (the table), notes and any `extra` figures."""
    record = {
        "title": title,
        "command": command or " ".join(["python", *sys.argv]),
        "machine": {**cpu_info(), "gpu": gpu_info(), "python": platform.python_version()},
        "commit": git_commit(),
        "columns": list(columns),
        "rows": [list(r) for r in rows],
        "notes": notes,
        **({"extra": extra} if extra else {}),
    }
    folder = out_dir or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path
