"""Train: `python train.py [group=option ...] [key=value ...]` (see README)."""

import hydra
from omegaconf import DictConfig

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.config.entry import check_command_line, run
from pneumonia.runners.quick import check_or_fail


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # the runner (torch, Lightning) is imported only now, after Hydra has read the command line
    if (cfg.get("cv") or {}).get("folds") is not None:  # cv.folds=K: one model per fold, out-of-fold scores
        from pneumonia.ensemble.cv import train
    elif cfg.get("ensemble"):  # experiment=best_ensemble: members, then the ensemble
        from pneumonia.ensemble.train import train
    else:
        from pneumonia.runners.train import train_run

        return run(cfg, train_run, "train.py").best_score  # what a Hydra sweeper optimises
    score, _ = run(cfg, train, "train.py")
    return score  # what a Hydra sweeper optimises


if __name__ == "__main__":
    # a typo in a group or key, or a value that needs no model: one line, before torch is imported
    check_command_line("train", "train.py", check=check_or_fail)
    main()
