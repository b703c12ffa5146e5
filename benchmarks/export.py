"""Inference speed of the exported model: PyTorch eager (the Predictor) against onnxruntime.

    python benchmarks/export.py                          # the original CNN, 150 px gray, random weights
    python benchmarks/export.py --ckpt outputs/<run>/checkpoints/best.ckpt
    python benchmarks/export.py --imports                # + import time and peak RSS of both predict paths

The network is exported once (ONNX, dynamo, dynamic batch) into a temporary folder; then
each variant runs in its own subprocess, one after the other (so no variant's threads
compete with another's, and each peak RSS is its own), on the same synthetic uint8 batch,
through the same steps predict.py runs per batch: uint8 → float32 /255 → network → sigmoid.

- `torch_fp32`: the Predictor in `32-true` (eval mode, channels_last, inference_mode);
- `torch_bf16`: the Predictor in `bf16-mixed` (autocast), what `precision: auto` picks on a
  CPU with native bf16 (AVX512-BF16 or AMX);
- `ort_<level>_t<threads>`: onnxruntime's CPU provider at a graph optimisation level
  (disable, basic, extended, all) with that many intra-op threads; `ort_all_t0` is
  onnxruntime's default thread count (one per physical core), what `predict.py backend=onnx`
  uses.

Batch --batch (64): images/s, the median of --repeats windows of --steps batches after
--warmup batches. Batch 1: the median latency of one image in ms (and images/s), over
--repeats windows of --steps-1 calls. The variants run --rounds times, round-robin; each
variant's round with the least CPU taken by other processes is reported, with that share
("others": CPU time of every other process on the machine during the round, as a share of
all cores; 0% is an idle machine). Compare rows only where "others" is near 0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "torch_fp32": "PyTorch eager, Predictor 32-true (channels_last)",
    "torch_bf16": "PyTorch eager, Predictor bf16-mixed autocast (channels_last)",
    "ort_disable_t2": "onnxruntime, no graph optimisation, 2 threads",
    "ort_basic_t2": "onnxruntime, basic graph optimisation, 2 threads",
    "ort_extended_t2": "onnxruntime, extended graph optimisation, 2 threads",
    "ort_all_t2": "onnxruntime, all graph optimisations (NCHWc layout), 2 threads",
    "ort_all_t1": "onnxruntime, all graph optimisations, 1 thread",
    "ort_all_t0": "onnxruntime, all graph optimisations, default threads (= predict.py backend=onnx)",
    "ort_int8_t2": "onnxruntime, int8 QDQ model (export.py quantize=int8's settings), all optimisations, 2 threads",
    "ort_int8_t1": "onnxruntime, int8 QDQ model, all optimisations, 1 thread",
}
INT8_MODEL = "model.int8.onnx"


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    found = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}; {', '.join(found) or 'no AVX2/AVX512'}"


def build_predictor(ckpt: str | None, precision: str):
    import torch

    from pneumonia.data.preprocess import Preprocess
    from pneumonia.inference import Predictor
    from pneumonia.models import CustomCNN

    if ckpt:
        return Predictor.from_checkpoint(ckpt, device="cpu", precision=precision)
    torch.manual_seed(0)
    return Predictor(
        CustomCNN(depth=5, in_channels=1, image_size=150), Preprocess(150, 1), 0.5, precision=precision, device="cpu"
    )


def images(n: int, channels: int, size: int):
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not `getrusage().ru_maxrss`: on Linux that
    keeps the high-water mark of the process it was forked from across exec, so every child
    of this (torch-importing) benchmark would report at least the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def busy_jiffies() -> int:
    """CPU time (clock ticks) all cores spent outside idle and iowait since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def timed(fn, batch, warmup: int, steps: int, repeats: int) -> list[float]:
    """Seconds per call of fn(batch), one value per window."""
    for _ in range(warmup):
        fn(batch)
    windows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn(batch)
        windows.append((time.perf_counter() - t0) / steps)
    return windows


def worker(args: argparse.Namespace) -> None:
    """One variant: prints a JSON line with its numbers."""
    meta = json.loads((Path(args.model_dir) / "model.json").read_text())
    channels, size = meta["preprocess"]["channels"], meta["preprocess"]["image_size"]
    if args.worker.startswith("torch"):
        import torch

        predictor = build_predictor(args.ckpt, "bf16-mixed" if args.worker == "torch_bf16" else "32-true")

        def score(batch):
            return predictor.predict_images(torch.from_numpy(batch)).numpy()

        threads = torch.get_num_threads()
    else:
        import onnxruntime as ort

        from pneumonia.export.onnx_predictor import OnnxPredictor, sigmoid

        _, level, t = args.worker.split("_")
        model_file = INT8_MODEL if level == "int8" else "model.onnx"
        level = "all" if level == "int8" else level
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        options.intra_op_num_threads = int(t[1:])
        session = ort.InferenceSession(
            str(Path(args.model_dir) / model_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        name_in, name_out = meta["input"]["name"], meta["output"]["name"]

        def score(batch):
            return sigmoid(session.run([name_out], {name_in: OnnxPredictor.to_input(batch)})[0])

        threads = int(t[1:]) or os.cpu_count()
    big = images(args.batch, channels, size)
    one = images(1, channels, size)
    per_batch = timed(score, big, args.warmup, args.steps, args.repeats)
    per_one = timed(score, one, 5 * args.warmup, args.steps_1, args.repeats)
    print(
        json.dumps(
            {
                "variant": args.worker,
                "threads": threads,
                "batch_img_s": args.batch / statistics.median(per_batch),
                "batch_img_s_windows": [round(args.batch / w, 1) for w in per_batch],
                "one_ms": 1000 * statistics.median(per_one),
                "one_ms_windows": [round(1000 * w, 2) for w in per_one],
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


def quantize_model(out: Path, meta: dict) -> None:
    """model.int8.onnx beside model.onnx, through export.py quantize=int8's own quantization
    (`quantize_static_int8`), calibrated on the synthetic batch: speed only (the parity on
    validation images is export.py's own check)."""
    from pneumonia.export.quantize import quantize_static_int8

    channels, size = meta["preprocess"]["channels"], meta["preprocess"]["image_size"]
    batches = [images(16, channels, size).astype("float32") / 255 for _ in range(4)]
    quantize_static_int8(out / "model.onnx", out / INT8_MODEL, batches, meta["input"]["name"])
    print(f"quantized: {(out / INT8_MODEL).stat().st_size / 1e6:.1f} MB")


def export_model(ckpt: str | None, out: Path) -> None:
    """model.onnx + model.json into `out` (export.py's steps, without Hydra)."""
    from pneumonia.export.exporter import build_sidecar, export_net, verify

    predictor = build_predictor(ckpt, "32-true")
    info = export_net(predictor, out / "model.onnx", "onnx")
    check = verify(predictor, out / "model.onnx", "onnx")
    meta = build_sidecar(predictor, "onnx", info, verification=check, threshold_precision=None)
    (out / "model.json").write_text(json.dumps(meta, default=str))
    print(
        f"exported: opset {info['opset']}, {info['bytes'] / 1e6:.1f} MB, parity max |Δp| "
        f"{check['max_abs_probability_difference']:.1e}"
    )


IMPORT_SNIPPETS = {
    # what predict.py runs after Hydra: the runner and its backend imported, one model loaded,
    # two files decoded and scored
    "onnx": (
        "import pneumonia.runners.predict\nimport onnxruntime\n"
        "from pneumonia.export.onnx_predictor import OnnxPredictor\n",
        "p = OnnxPredictor.from_model({model!r})\nprobs = p.predict_images(np.stack([p.load(f) for f in {files!r}]))\n",
    ),
    "torch": (
        "import pneumonia.runners.predict\nimport torch\nfrom pneumonia.inference import Predictor\n",
        "if {ckpt!r}:\n"
        "    p = Predictor.from_checkpoint({ckpt!r}, device='cpu', precision='32-true')\n"
        "else:\n"
        "    from pneumonia.data.preprocess import Preprocess\n"
        "    from pneumonia.models import CustomCNN\n"
        "    p = Predictor(CustomCNN(depth=5, in_channels=1, image_size=150), Preprocess(150, 1), 0.5,\n"
        "                  precision='32-true')\n"
        "probs = p.predict_images(torch.from_numpy(np.stack([p.preprocess.load(f) for f in {files!r}])))\n",
    ),
}


def measure_imports(model_dir: Path, ckpt: str | None, runs: int) -> list[dict]:
    """Import time, time to the first two predictions and peak RSS of each backend's path,
    `runs` fresh processes each (alternating)."""
    import numpy as np
    from PIL import Image

    files = []
    for i in range(2):
        path = model_dir / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (300, 260), dtype=np.uint8)).save(path)
        files.append(str(path))
    results = []
    for run in range(runs):
        for backend, (imports, load) in IMPORT_SNIPPETS.items():
            code = (
                "import time, sys, json\nt0 = time.perf_counter()\n"
                + imports
                + "t1 = time.perf_counter()\nimport numpy as np\n"
                + load.format(model=str(model_dir / "model.onnx"), ckpt=ckpt, files=files)
                + "t2 = time.perf_counter()\n"
                + "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
                + "print(json.dumps({'import_s': t1 - t0, 'first_prediction_s': t2 - t1, "
                "'peak_rss_mb': int(hwm) / 1024, 'torch_imported': 'torch' in sys.modules}))\n"
            )
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
            if res.returncode:
                raise SystemExit(f"{backend} import run failed:\n{res.stderr[-3000:]}")
            results.append({"backend": backend, "run": run + 1, **json.loads(res.stdout.strip().splitlines()[-1])})
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=None, help="a checkpoint (default: the original CNN, 150 px gray, random)")
    ap.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if "int8" not in v], choices=list(VARIANTS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="batches per window at --batch")
    ap.add_argument("--steps-1", type=int, default=40, help="calls per window at batch 1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="runs of every variant, round-robin; the quietest is kept")
    ap.add_argument(
        "--write-int8",
        action="store_true",
        help="write docs/results/<--int8-name>.json from the ort_all_t* and ort_int8_t* rows",
    )
    ap.add_argument("--int8-name", default="onnx_int8_cpu", help="its name (one file per kind of CPU)")
    ap.add_argument("--note", default="", help="added to the written table's notes")
    ap.add_argument("--imports", action="store_true", help="also time the imports and RSS of both predict paths")
    ap.add_argument("--import-runs", type=int, default=3)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    import warnings

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="pneumonia-bench-export-") as tmp:
        model_dir = Path(tmp)
        export_model(args.ckpt, model_dir)
        if any(v.startswith("ort_int8") for v in args.variants):
            quantize_model(model_dir, json.loads((model_dir / "model.json").read_text()))
        model = args.ckpt or "CustomCNN(depth=5, in_channels=1, image_size=150), random weights"
        print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores; model: {model}")
        tick, cores = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
        best: dict[str, dict] = {}
        for round_ in range(args.rounds):
            for variant in args.variants:
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    variant,
                    "--model-dir",
                    str(model_dir),
                    "--batch",
                    str(args.batch),
                    "--warmup",
                    str(args.warmup),
                    "--steps",
                    str(args.steps),
                    "--steps-1",
                    str(args.steps_1),
                    "--repeats",
                    str(args.repeats),
                ]
                if args.ckpt:
                    cmd += ["--ckpt", args.ckpt]
                t0, busy0 = time.perf_counter(), busy_jiffies()
                children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
                children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                wall, busy = time.perf_counter() - t0, (busy_jiffies() - busy0) / tick
                if res.returncode:
                    raise SystemExit(f"{variant} failed:\n{res.stderr[-3000:]}")
                mine = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
                row = {
                    **json.loads(res.stdout.strip().splitlines()[-1]),
                    "round": round_ + 1,
                    "others": max(0.0, busy - mine) / (wall * cores),
                }
                print(
                    f"round {round_ + 1} {variant:>16}: batch {args.batch} {row['batch_img_s']:7.1f} img/s "
                    f"{row['batch_img_s_windows']}, batch 1 {row['one_ms']:6.2f} ms {row['one_ms_windows']}, "
                    f"others {100 * row['others']:.0f}%",
                    flush=True,
                )
                if variant not in best or row["others"] < best[variant]["others"]:
                    best[variant] = row
        rows = [best[v] for v in args.variants]
        base = {r["variant"]: r for r in rows}
        ref = base.get("torch_fp32")
        bf16 = base.get("torch_bf16")
        print(
            f"\n| variant | threads | batch {args.batch} img/s | vs torch fp32 | vs torch bf16 | batch 1 ms | "
            f"batch 1 img/s | peak RSS (MB) | others |\n|---|---|---|---|---|---|---|---|---|"
        )
        for r in rows:
            vs = lambda other, r=r: f"{r['batch_img_s'] / other['batch_img_s']:.2f}x" if other else "-"  # noqa: E731
            print(
                f"| `{r['variant']}`: {VARIANTS[r['variant']]} | {r['threads']} | {r['batch_img_s']:.1f} | "
                f"{vs(ref)} | {vs(bf16)} | {r['one_ms']:.2f} | {1000 / r['one_ms']:.0f} | {r['peak_rss_mb']:.0f} | "
                f"{100 * r['others']:.0f}% |"
            )
        int8 = [r for r in rows if r["variant"].startswith("ort_int8")]
        if int8 and args.write_int8:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from results import write_result

            fp32 = {r["variant"].rsplit("_", 1)[1]: r for r in rows if r["variant"].startswith("ort_all_")}
            table = []
            for r in [*fp32.values(), *int8]:
                ref32 = fp32.get(r["variant"].rsplit("_", 1)[1])
                table.append(
                    [
                        f"`{r['variant']}`",
                        VARIANTS[r["variant"]],
                        r["threads"],
                        f"{r['batch_img_s']:.1f}",
                        f"{r['batch_img_s'] / ref32['batch_img_s']:.2f}x" if ref32 else "-",
                        f"{r['one_ms']:.2f}",
                        f"{100 * r['others']:.0f}%",
                    ]
                )
            write_result(
                args.int8_name,
                title=f"onnxruntime fp32 against int8 (QDQ) on the CPU: {model}",
                columns=[
                    "variant",
                    "what",
                    "threads",
                    f"batch {args.batch} img/s",
                    "vs fp32, same threads",
                    "batch 1 ms",
                    "others",
                ],
                rows=table,
                notes=(
                    "Each variant in its own process, the quietest of --rounds rounds; 'others' is the "
                    "CPU share other processes took during it. " + args.note
                ).strip(),
            )
        if args.imports:
            results = measure_imports(model_dir, args.ckpt, args.import_runs)
            print(
                "\n| predict path | import (s) | model load + 2 images (s) | peak RSS (MB) | torch imported |\n"
                "|---|---|---|---|---|"
            )
            for r in results:
                print(
                    f"| {r['backend']} (run {r['run']}) | {r['import_s']:.2f} | {r['first_prediction_s']:.2f} | "
                    f"{r['peak_rss_mb']:.0f} | {r['torch_imported']} |"
                )
            for backend in IMPORT_SNIPPETS:
                mine = [r for r in results if r["backend"] == backend]
                print(
                    f"{backend}: median import {statistics.median(r['import_s'] for r in mine):.2f} s, "
                    f"first prediction {statistics.median(r['first_prediction_s'] for r in mine):.2f} s, "
                    f"peak RSS {statistics.median(r['peak_rss_mb'] for r in mine):.0f} MB"
                )


if __name__ == "__main__":
    sys.exit(main())
