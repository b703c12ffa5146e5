"""Train: `python train.py [group=option ...] [key=value ...]` (see README)."""

import hydra
from omegaconf import DictConfig

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.config.entry import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    score, _ = run(cfg, "pneumonia.runners.train:train", "train.py")
    return score  # what a Hydra sweeper optimises


if __name__ == "__main__":
    main()
