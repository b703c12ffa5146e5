"""Predict: `python predict.py ckpt_path=PATH inputs=<file|folder|glob> [explain=true] [gallery=true]`,
or without torch: `python predict.py backend=onnx model_path=<export>/model.onnx inputs=...`."""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.errors import UserError


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    required = [("inputs", "scans/")]
    if cfg.get("backend") != "onnx":  # backend=onnx reads model_path= instead (checked by the runner)
        required.insert(0, ("ckpt_path", "outputs/train/<run>/checkpoints/best.ckpt"))
    for key, example in required:
        if OmegaConf.is_missing(cfg, key):
            print(f"error: {key} is required, e.g. python predict.py {key}={example}", file=sys.stderr)
            raise SystemExit(2)
    from pneumonia.runners.predict import predict  # heavy imports after Hydra parsed the command line (no torch here)

    try:
        predict(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
