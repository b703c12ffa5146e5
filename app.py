"""A page to try a model: `python app.py ckpt_path=PATH [app.port=7860] [app.host=127.0.0.1] [app.auth=user:pw]`."""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.errors import UserError


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        print("error: ckpt_path is required, e.g. python app.py ckpt_path=outputs/train/<run>/checkpoints/best.ckpt",
              file=sys.stderr)
        raise SystemExit(2)
    from pneumonia.app.serve import serve  # heavy imports (torch, gradio) after Hydra parsed the command line

    try:
        serve(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
