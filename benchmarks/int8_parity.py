"""int8 against fp32 on a model trained on the real images: `export.py quantize=int8`'s own
parity check (every validation image scored by both ONNX models), over seeds.

    python benchmarks/int8_parity.py --data-root ../shared/data/chest_xray --seeds 1,2,3

Each seed is `python train.py experiment=best seed=S callbacks.gradcam=null` in its own
process, under outputs/int8_parity/seed<S> (a run whose train_summary.json exists is not
trained again), then `python export.py ckpt_path=<best.ckpt> quantize=int8`. The table is
model.json's `quantization.parity` of each export: the validation split only. Writes
docs/results/int8_parity.json (docs/export.md, "int8 for the CPU").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from results import ROOT, write_result


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def parity(seed: int, data_root: str, out: Path) -> dict:
    folder = out / f"seed{seed}"
    if not (folder / "train_summary.json").is_file():
        run(
            [
                "train.py",
                "experiment=best",
                f"seed={seed}",
                "callbacks.gradcam=null",
                f"data.root={data_root}",
                f"hydra.run.dir={folder}",
            ]
        )
    export = folder / "export_int8"
    run(
        [
            "export.py",
            f"ckpt_path={folder / 'checkpoints' / 'best.ckpt'}",
            "quantize=int8",
            f"hydra.run.dir={export}",
        ]
    )
    found = sorted(export.rglob("model.json"))
    if not found:
        raise SystemExit(f"no model.json under {export}")
    return dict(json.loads(found[0].read_text())["quantization"]["parity"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "int8_parity")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for seed in seeds:
        p = parity(seed, args.data_root, args.out)
        rows.append(
            [
                seed,
                p["images"],
                round(p["auroc_fp32"], 5),
                round(p["auroc_int8"], 5),
                round(p["auroc_change"], 5),
                round(p["max_abs_probability_difference"], 4),
                f"{p['agreement_at_stored_threshold']:.2%}",
                "yes" if p["threshold_rechosen"] else "no",
            ]
        )
    write_result(
        "int8_parity",
        title=(
            "int8 (QDQ) against fp32 ONNX on the validation split of `experiment=best` models trained on the "
            "official training images: export.py quantize=int8's parity check"
        ),
        columns=[
            "seed",
            "val images",
            "AUROC fp32",
            "AUROC int8",
            "change",
            "max |Δp|",
            "decisions agreeing",
            "threshold re-chosen",
        ],
        rows=rows,
        notes=(
            "The bounds export.py enforces: |AUROC change| <= 0.002 and >= 99% of decisions agreeing at the stored "
            "threshold. The calibration images are among the validation images checked: a parity check, not a "
            "held-out estimate. " + args.note
        ).strip(),
    )


if __name__ == "__main__":
    main()
