"""Evaluate a checkpoint on the test split: `python eval.py ckpt_path=PATH [data.root=DIR]`."""

import hydra
from omegaconf import DictConfig

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.config.entry import CKPT_EXAMPLE, check_command_line, run


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run(cfg, "pneumonia.runners.eval:evaluate", "eval.py", {"ckpt_path": CKPT_EXAMPLE})


if __name__ == "__main__":
    check_command_line("eval", "eval.py")  # a typo in a group or key: one line, not Hydra's report
    main()
