"""Train: `python train.py [group=option ...] [key=value ...]` (see README)."""

import sys

import hydra
from omegaconf import DictConfig

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.errors import UserError


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from pneumonia.runners.train import train  # heavy imports after Hydra parsed the command line

    try:
        score, _ = train(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return score  # what a Hydra sweeper optimises


if __name__ == "__main__":
    main()
