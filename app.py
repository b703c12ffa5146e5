"""A page to try a model: `python app.py ckpt_path=PATH [app.port=7860] [app.host=127.0.0.1] [app.auth=user:pw]`."""

import hydra
from omegaconf import DictConfig

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.config.entry import CKPT_EXAMPLE, check_command_line, run


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    run(cfg, "pneumonia.app.serve:serve", "app.py", {"ckpt_path": CKPT_EXAMPLE})  # torch, gradio: imported then


if __name__ == "__main__":
    check_command_line("app", "app.py")  # a typo in a group or key: one line, not Hydra's report
    main()
