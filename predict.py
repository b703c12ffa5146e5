"""Predict: `python predict.py ckpt_path=PATH inputs=<file|folder|glob> [explain=true] [gallery=true]`,
or without torch: `python predict.py backend=onnx model_path=<export>/model.onnx inputs=...`."""

import hydra
from omegaconf import DictConfig

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.config.entry import CKPT_EXAMPLE, check_command_line, check_required, run
from pneumonia.runners.quick import check_or_fail


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    # backend=onnx reads model_path= instead of ckpt_path= (checked by the runner); no torch on that path
    # and model_uri= (a registered ONNX export) too
    required = (
        {"inputs": "scans/"}
        if cfg.get("backend") == "onnx" or cfg.get("model_uri")
        else {"ckpt_path": CKPT_EXAMPLE, "inputs": "scans/"}
    )
    check_required(cfg, "predict.py", required)
    from pneumonia.runners.predict import predict  # the runner and its heavy imports: after the checks

    run(cfg, predict, "predict.py")


if __name__ == "__main__":
    # a typo in a group or key, or a value that needs no model: one line, before torch is imported
    check_command_line("predict", "predict.py", check=check_or_fail)
    main()
