"""Start-up time of the command line: how long `--help` and a refused value take to answer.

    python benchmarks/startup.py                 # 5 fresh processes per command, medians
    python benchmarks/startup.py --repeats 9

Each command runs in a fresh Python process (nothing cached in memory but the OS's file
cache; one untimed run first warms that), from the repository root, with a data root that
does not exist: the value checks must answer before any data, torch or Lightning is needed.
Writes docs/results/startup.json (benchmarks/results.py), rendered into docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import ROOT, write_result  # noqa: E402

COMMANDS: list[tuple[str, list[str]]] = [
    ("import torch", ["-c", "import torch"]),
    ("import lightning", ["-c", "import lightning"]),
    ("train.py --help", ["train.py", "--help"]),
    ("train.py optimizer.lr=-1", ["train.py", "optimizer.lr=-1"]),
    ("train.py trainer.max_epochs=0", ["train.py", "trainer.max_epochs=0"]),
    ("train.py data.batch_size=abc", ["train.py", "data.batch_size=abc"]),
    ("train.py trainer.accelerator=gpu", ["train.py", "trainer.accelerator=gpu"]),
    ("train.py model=resnet (typo)", ["train.py", "model=resnet"]),
    ("train.py data.root=missing", ["train.py", "data.root=missing"]),
    ("eval.py --help", ["eval.py", "--help"]),
    ("eval.py ckpt_path=missing.ckpt", ["eval.py", "ckpt_path=missing.ckpt"]),
    ("predict.py input=scans/ (typo)", ["predict.py", "input=scans/"]),
    ("predict.py --help", ["predict.py", "--help"]),
]


def timed(args: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    return time.perf_counter() - start, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--note", default="", help="appended to the notes (e.g. what else ran on the machine)")
    args = parser.parse_args()
    rows = []
    for name, command in COMMANDS:
        timed(command)  # warm the file cache
        runs = [timed(command) for _ in range(args.repeats)]
        seconds = statistics.median(t for t, _ in runs)
        rows.append([name, round(seconds, 2), round(min(t for t, _ in runs), 2), runs[0][1]])
        print(f"{name:40s} median {seconds:6.2f} s  (exit {runs[0][1]})", flush=True)
    write_result(
        "startup",
        title="Start-up: seconds to answer, fresh process",
        command=" ".join(["python benchmarks/startup.py", *sys.argv[1:]]),
        columns=["command", "median s", "min s", "exit code"],
        rows=rows,
        notes=f"median of {args.repeats} fresh processes after one warm-up run; run from the "
        "repository root with no data folder and CUDA_VISIBLE_DEVICES empty" + (f"; {args.note}" if args.note else ""),
    )


if __name__ == "__main__":
    main()
