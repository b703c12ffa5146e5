"""Evaluate a checkpoint on the test split: `python eval.py ckpt_path=PATH [data.root=DIR]`."""

import hydra
from omegaconf import DictConfig

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.config.entry import CKPT_EXAMPLE, check_command_line, check_required, run
from pneumonia.runners.quick import check_or_fail


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    check_required(cfg, "eval.py", {"ckpt_path": CKPT_EXAMPLE})
    from pneumonia.runners.eval import evaluate  # the runner and its heavy imports: after the checks

    run(cfg, evaluate, "eval.py")


if __name__ == "__main__":
    # a typo in a group or key, or a value that needs no model: one line, before torch is imported
    check_command_line("eval", "eval.py", check=check_or_fail)
    main()
