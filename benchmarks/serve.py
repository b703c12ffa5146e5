"""Load test of serve.py: requests/s, latency percentiles, errors and the server's memory.

    python benchmarks/serve.py --ckpt outputs/<run>/checkpoints/best.ckpt --data data/chest_xray/train
    python benchmarks/serve.py --data data/chest_xray/train       # no --ckpt: trains the default CNN briefly

For each backend (the checkpoint with torch; its ONNX export with onnxruntime) and each
setting (batching off: serve.max_batch_size=1; on: 8 requests within 10 ms), the server is
started on 127.0.0.1 and sent --requests multipart uploads of real X-ray files (cycled over
the first --files of --data) by C concurrent clients (threads, each waiting for its answer
before sending the next). Reported: requests/s over the whole run, p50/p95/p99 latency as
the client sees it, errors (any answer but 200), and the resident memory (RSS) of the
server's whole process tree: after a warm-up, its peak during the run, and at the end.

No --ckpt: the default network (model=custom_cnn, 150 px) is trained for one epoch on a
synthetic tree. A load test measures the cost of the architecture and the input size, not
of the weights, so its numbers hold for a trained checkpoint of the same recipe.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def tree_rss_mb(pid: int) -> float:
    """RSS of `pid` and all its descendants (Linux /proc), in MB."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def start(args: list[str], timeout: float = 180) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "serve.py"), f"serve.port={port}", *args],
        cwd=ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve.py {' '.join(args)} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop(proc)
    raise SystemExit("serve.py did not become healthy in time")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def load(url: str, files: list[tuple[str, bytes]], n: int, clients: int) -> dict[str, float]:
    """`n` requests from `clients` threads; latency per request as the client sees it."""
    import httpx

    latencies: list[float] = []
    batches: list[int] = []  # the size of the batch each answer was scored in
    errors = 0
    lock = threading.Lock()
    counter = iter(range(n))

    def client() -> None:
        nonlocal errors
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                name, data = files[i % len(files)]
                t0 = time.perf_counter()
                size = 0
                try:
                    r = http.post(url + "/predict", files={"file": (name, data)})
                    ok = r.status_code == 200
                    size = r.json()["timing_ms"]["batch_size"] if ok else 0
                except (httpx.HTTPError, ValueError, KeyError):
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    errors += not ok
                    if size:
                        batches.append(size)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - t0
    ms = np.asarray(latencies) * 1000
    return {
        "rps": n / wall,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "errors": errors,
        "batch": float(np.mean(batches)) if batches else 0.0,
    }


def make_checkpoint(work: Path) -> Path:
    from pneumonia.config.compose import compose
    from pneumonia.data.synthetic import make_chest_xray_tree
    from pneumonia.runners.train import train

    root = make_chest_xray_tree(work / "data")
    train(
        compose(
            "train",
            [
                f"data.root={root}",
                f"data.cache_dir={work / 'cache'}",
                "trainer.max_epochs=1",
                "trainer.accelerator=cpu",
                "logger=none",
                "callbacks.progress_bar=null",
                "data.num_workers=0",
                "data.val_fraction=0.25",
            ],
            work / "run",
        )
    )
    return work / "run" / "checkpoints" / "best.ckpt"


def export_onnx(ckpt: Path, out: Path) -> Path:
    from pneumonia.config.compose import compose
    from pneumonia.export.runner import export

    export(compose("export", [f"ckpt_path={ckpt}"], out))
    return out / "model.onnx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="a calibrated best.ckpt; none: the default CNN trained one epoch on synthetic data")
    ap.add_argument("--data", default="data/chest_xray/train", help="a folder of X-ray files to send")
    ap.add_argument("--files", type=int, default=200, help="distinct files sent, cycled")
    ap.add_argument("--requests", type=int, default=1000, help="requests per configuration")
    ap.add_argument("--clients", default="1,32", help="concurrent clients, comma-separated")
    ap.add_argument("--backends", default="torch,onnx")
    ap.add_argument("--threads", type=int, default=None, help="threads= for the server's model (default: its own)")
    ap.add_argument("--note", default="", help="added to the table's notes (e.g. that the machine was shared)")
    ap.add_argument("--out", default=None, help="write the JSON here instead of docs/results/")
    args = ap.parse_args()
    from results import write_result

    paths = sorted(p for p in Path(args.data).rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png", ".dcm"))
    if not paths:
        raise SystemExit(f"no images under {args.data}")
    step = max(1, len(paths) // args.files)
    files = [(p.name, p.read_bytes()) for p in paths[::step][: args.files]]
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    ckpt = Path(args.ckpt) if args.ckpt else make_checkpoint(work)
    sources = {"torch": [f"ckpt_path={ckpt}", "device=cpu"]}
    if "onnx" in args.backends:
        sources["onnx"] = [f"model_path={export_onnx(ckpt, work / 'export')}"]
    settings = {
        "off (max_batch_size=1)": ["serve.max_batch_size=1"],
        "on (8 within 10 ms)": ["serve.max_batch_size=8", "serve.batch_timeout=0.01"],
    }
    clients = [int(c) for c in args.clients.split(",")]
    rows = []
    for backend in args.backends.split(","):
        for label, extra in settings.items():
            proc, url = start([*sources[backend], *extra, *([f"threads={args.threads}"] if args.threads else [])])
            try:
                load(url, files, 50, 4)  # warm-up
                rss_start = tree_rss_mb(proc.pid)
                for c in clients:
                    peak, done = [rss_start], threading.Event()

                    def sample(done: threading.Event = done, peak: list[float] = peak, pid: int = proc.pid) -> None:
                        while not done.wait(0.25):
                            peak.append(tree_rss_mb(pid))

                    sampler = threading.Thread(target=sample, daemon=True)
                    sampler.start()
                    r = load(url, files, args.requests, c)
                    done.set()
                    sampler.join()
                    rss_end = tree_rss_mb(proc.pid)
                    rows.append(
                        [
                            backend,
                            label,
                            c,
                            args.requests,
                            f"{r['batch']:.1f}",
                            f"{r['rps']:.1f}",
                            f"{r['p50']:.1f}",
                            f"{r['p95']:.1f}",
                            f"{r['p99']:.1f}",
                            r["errors"],
                            f"{rss_start:.0f} / {max(peak):.0f} / {rss_end:.0f}",
                            f"{os.getloadavg()[0]:.1f}",
                        ]
                    )
                    print(" | ".join(map(str, rows[-1])), flush=True)
            finally:
                stop(proc)
    recipe = "default custom_cnn, 150 px gray, trained 1 epoch on synthetic data" if not args.ckpt else str(ckpt)
    write_result(
        "serve_load",
        title=f"serve.py under load: {recipe}; {len(files)} real X-ray JPEGs sent as multipart uploads",
        columns=[
            "backend",
            "batching",
            "clients",
            "requests",
            "mean batch",
            "requests/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "errors",
            "server RSS MB (start / peak / end)",
            f"load avg, 1 min ({os.cpu_count()} cores)",
        ],
        rows=rows,
        notes=(
            "One worker process (serve.workers=1); clients are threads on the same machine, each sending its "
            "next request when the last is answered; latency is the client's (upload, decode, queue, score, "
            "answer). The load average at each row's end counts every process on the machine: above the "
            "core count, the rows compete with other jobs and compare poorly. " + args.note
        ).strip(),
        out_dir=Path(args.out) if args.out else None,
    )


if __name__ == "__main__":
    main()
