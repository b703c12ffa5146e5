"""Export a checkpoint for serving: `python export.py ckpt_path=PATH [format=onnx|torch_export]`."""

import hydra
from omegaconf import DictConfig

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.config.entry import CKPT_EXAMPLE, check_command_line, check_required, run
from pneumonia.runners.quick import check_or_fail


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    check_required(cfg, "export.py", {"ckpt_path": CKPT_EXAMPLE})
    from pneumonia.export.runner import export  # the runner and its heavy imports: after the checks

    run(cfg, export, "export.py")


if __name__ == "__main__":
    # a typo in a group or key, or a value that needs no model: one line, before torch is imported
    check_command_line("export", "export.py", check=check_or_fail)
    main()
