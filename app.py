"""A page to try a model: `python app.py ckpt_path=PATH [app.port=7860] [app.host=127.0.0.1] [app.auth=user:pw]`
or `python app.py model_uri=models:/<name>@<alias>` (the registered version's checkpoint)."""

import hydra
from omegaconf import DictConfig

import pneumonia.config.resolvers  # noqa: F401  (resolvers used by conf/)
from pneumonia.config.entry import CKPT_EXAMPLE, check_command_line, check_required, run
from pneumonia.runners.quick import check_or_fail


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    if not cfg.get("model_uri"):  # or a registered model's checkpoint (its training run's best.ckpt)
        check_required(cfg, "app.py", {"ckpt_path": CKPT_EXAMPLE})
    from pneumonia.app.serve import serve  # torch, gradio: imported after the checks

    run(cfg, serve, "app.py")


if __name__ == "__main__":
    # a typo in a group or key, or a value that needs no model: one line, before torch is imported
    check_command_line("app", "app.py", check=check_or_fail)
    main()
