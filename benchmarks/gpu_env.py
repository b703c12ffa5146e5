"""The machine of a GPU run: device, versions, free memory (the GPU suite's first stage).

python benchmarks/gpu_env.py --out-dir $OUT        # writes gpu_env.json
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_result  # noqa: E402


def version(name: str) -> str:
    try:
        return str(getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e:  # noqa: BLE001 - missing or broken: say so
        return f"missing ({type(e).__name__})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = [
        [name, version(name)]
        for name in (
            "torch",
            "torchvision",
            "lightning",
            "torchmetrics",
            "triton",
            "hydra",
            "omegaconf",
            "numpy",
            "PIL",
            "tensorboard",
        )
    ]
    rows += [
        ["python", sys.version.split()[0]],
        ["cuda (torch)", str(torch.version.cuda)],
        ["cudnn", str(torch.backends.cudnn.version())],
    ]
    extra = {"cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        extra.update(
            device=p.name,
            capability=f"{p.major}.{p.minor}",
            sms=p.multi_processor_count,
            memory_gib=round(total / 2**30, 1),
            free_gib=round(free / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
            devices=torch.cuda.device_count(),
        )
        rows += [["device", p.name], ["memory GiB (free)", f"{total / 2**30:.1f} ({free / 2**30:.1f})"]]
    for r in rows:
        print(f"{r[0]}: {r[1]}")
    write_result(
        "gpu_env",
        title="The GPU machine of the suite",
        columns=["what", "value"],
        rows=rows,
        out_dir=args.out_dir,
        extra=extra,
    )


if __name__ == "__main__":
    main()
