"""Train: `python train.py [group=option ...] [key=value ...]` (see README)."""

import hydra
from omegaconf import DictConfig

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.config.entry import check_command_line, run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # experiment=best_ensemble (an `ensemble:` node): its members, then the ensemble (pneumonia.ensemble)
    runner = "pneumonia.ensemble.train:train" if cfg.get("ensemble") else "pneumonia.runners.train:train"
    score, _ = run(cfg, runner, "train.py")
    return score  # what a Hydra sweeper optimises


if __name__ == "__main__":
    check_command_line("train", "train.py")  # a typo in a group or key: one line, not Hydra's report
    main()
