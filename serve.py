"""An HTTP API: `python serve.py ckpt_path=PATH` or `python serve.py model_path=<export>/model.onnx`
[serve.port=8000] [serve.max_batch_size=8] [serve.api_key=...]."""

import hydra
from omegaconf import DictConfig

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.config.entry import check_command_line, run
from pneumonia.runners.quick import check_or_fail


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    from pneumonia.serve.server import serve  # torch, litserve: imported after the checks

    run(cfg, serve, "serve.py")


if __name__ == "__main__":
    # a typo in a group or key, or a value that needs no model: one line, before torch is imported
    check_command_line("serve", "serve.py", check=check_or_fail)
    main()
