"""A page to try a model: `python app.py ckpt_path=PATH [app.port=7860] [app.host=127.0.0.1] [app.auth=user:pw]`."""

import hydra
from omegaconf import DictConfig

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.config.entry import CKPT_EXAMPLE, run


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    run(cfg, "pneumonia.app.serve:serve", "app.py", {"ckpt_path": CKPT_EXAMPLE})  # torch, gradio: imported then


if __name__ == "__main__":
    main()
