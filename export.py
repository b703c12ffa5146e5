"""Export a checkpoint for serving: `python export.py ckpt_path=PATH [format=onnx|torch_export]`."""

import hydra
from omegaconf import DictConfig

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.config.entry import CKPT_EXAMPLE, check_command_line, run


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run(cfg, "pneumonia.export.runner:export", "export.py", {"ckpt_path": CKPT_EXAMPLE})


if __name__ == "__main__":
    check_command_line("export", "export.py")  # a typo in a group or key: one line, not Hydra's report
    main()
