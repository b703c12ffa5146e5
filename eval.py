"""Evaluate a checkpoint on the test split: `python eval.py ckpt_path=PATH [data.root=DIR]`."""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.errors import UserError


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        print("error: ckpt_path is required, e.g. python eval.py ckpt_path=outputs/train/<run>/checkpoints/best.ckpt",
              file=sys.stderr)
        raise SystemExit(2)
    from pneumonia.runners.eval import evaluate

    try:
        evaluate(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
