"""What every entry point does around its runner: required keys checked in one line each,
the runner imported only after Hydra parsed the command line (heavy imports), a
`UserError` printed as `error: <one line>` with exit status 2 instead of a traceback, and
the run folder of a single run that failed that way removed when it holds nothing but
Hydra's own files (no empty runs left in outputs/ or TensorBoard). A sweep's job folders
stay: `sweep_summary` lists them as unfinished."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from pneumonia.errors import UserError

CKPT_EXAMPLE = "outputs/train/<run>/checkpoints/best.ckpt"
_STARTED = time.time()  # this process' start: what a failed run made after it is its own


def hydra_override(key: str, value: object) -> str:
    """`key=value` as Hydra's override grammar reads it back: the value double-quoted when it
    has `=`, `,`, spaces or brackets (a multirun job's folder)."""
    text = str(value)
    if any(c in text for c in "=, []{}()'\"") or not text:
        return key + '="' + text.replace('"', '\\"') + '"'
    return f"{key}={text}"


def cli_override(key: str, value: object) -> str:
    """`hydra_override` as one shell word, so a printed "Next:" command can be pasted as is."""
    word = hydra_override(key, value)
    return word if word == f"{key}={value}" else "'" + word.replace("'", "'\\''") + "'"


def check_command_line(
    config_name: str,
    script: str,
    argv: list[str] | None = None,
    check: Callable[[str, DictConfig], str | None] | None = None,
) -> None:
    """Compose `conf/<config_name>.yaml` with the command line's overrides before Hydra runs
    it, so that a typo in a group option (`model=resnet`), a key that does not exist
    (`optimiser.lr=1e-3`) or an override Hydra cannot parse is one `error:` line (exit 2)
    instead of Hydra's multi-line report. Every value of a sweep over a group is tried; the
    other sweeps with their first value. Command lines with flags other than -m (--help,
    --cfg, -cp...) are left to Hydra. `check(config_name, cfg)`: the values that need no
    torch (`runners.quick.check_or_fail`), answered before torch is imported."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from pneumonia.config.compose import CONF_DIR, compose

    lines = [a for a in args if not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except HydraException as err:
        _fail(f"cannot read the command line: {_first_line(err)}")
    plain = [cast(str, o.input_line) for o in overrides if not o.is_sweep_override()]  # parsed from a line
    trials = [plain]
    for o in overrides:
        if not o.is_sweep_override():
            continue
        if not o.is_choice_sweep():
            continue  # range()/interval() sweeps: the sweeper expands them, each job checks its values
        values = list(o.sweep_string_iterator())
        is_group = (CONF_DIR / o.key_or_group.split("@")[0]).is_dir()
        for value in values if is_group else values[:1]:
            prefix = {"ADD": "+", "FORCE_ADD": "++"}.get(o.type.name, "")
            trials.append([*plain, f"{prefix}{o.key_or_group}={value}"])
    composed = []
    for trial in trials:
        try:
            composed.append(compose(config_name, trial, hydra_config=True))
        except HydraException as err:
            _fail(_composition_error(err, script, config_name, trials[0]))
    for cfg in composed:  # then the values that need no torch: answered before it is imported
        problem = check(config_name, cfg) if check is not None else None
        if problem:
            _fail(problem)


def _composition_error(err: Exception, script: str, config_name: str = "", overrides: list[str] | None = None) -> str:
    from hydra.errors import MissingConfigException

    text = str(err)
    if isinstance(err, MissingConfigException) and err.options is not None and err.missing_cfg_file:
        group, _, option = str(err.missing_cfg_file).rpartition("/")
        return (
            f"{group}={option} is not an option of {group}/ (one of: {', '.join(sorted(err.options))}; "
            f"python {script} --help lists them)"
        )
    if "is not in struct" in text or "Could not override" in text:
        key = text.split("'")[1] if "'" in text else "the key"
        near = _near_key(config_name, overrides or [], key) if config_name else None
        hint = f"did you mean {near}? " if near else ""
        return (
            f"{key} is not a setting of {script} ({hint}python {script} --cfg job shows them all; "
            f"to add a new one: +{key}=...)"
        )
    return _first_line(err)


def _near_key(config_name: str, overrides: list[str], key: str) -> str | None:
    """The existing key closest to a mistyped one (`input` -> `inputs`, `optimiser.lr` ->
    `optimizer.lr`, `modle.depth` -> `model.depth`), looked up level by level in the config
    composed without the bad key: at each level difflib's close names, a transposition of the
    typed letters first (`modle` is `model` before `module`), the first whose rest resolves."""
    import difflib

    from omegaconf import DictConfig

    from pneumonia.config.compose import compose

    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        root: object = compose(config_name, kept)
    except Exception:  # the other overrides do not compose either: no suggestion
        return None

    def resolve(node: object, parts: list[str]) -> list[str] | None:
        if not parts:
            return []
        if not isinstance(node, DictConfig):
            return None
        part, keys = parts[0], [str(k) for k in node.keys()]
        close = [part] if part in keys else difflib.get_close_matches(part, keys, n=3, cutoff=0.6)
        for name in sorted(close, key=lambda name: sorted(name) != sorted(part)):  # stable: difflib's order next
            rest = resolve(node.get(name), parts[1:])
            if rest is not None:
                return [name, *rest]
        return None

    found = resolve(root, key.split("."))
    near = ".".join(found) if found else None
    return near if near != key else None


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] if lines else type(err).__name__


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_required(cfg: DictConfig, script: str, required: dict[str, str] | None) -> None:
    """Each `required` key (key -> an example value) set, else one `error:` line naming it (exit 2)."""
    for key, example in (required or {}).items():
        if OmegaConf.is_missing(cfg, key):
            print(f"error: {key} is required, e.g. python {script} {key}={example}", file=sys.stderr)
            _remove_empty_run()
            raise SystemExit(2)


def run(
    cfg: DictConfig, runner: Callable[[DictConfig], Any], script: str, required: dict[str, str] | None = None
) -> Any:
    """Check `required` keys, then call `runner(cfg)` and return what it returns; a `UserError`
    it raises is one `error:` line (exit 2)."""
    check_required(cfg, script, required)
    try:
        return runner(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        _remove_empty_run()
        raise SystemExit(2) from None


def is_empty_run(folder: Path) -> bool:
    """True when `folder` holds only Hydra's `.hydra*/` config folders, top-level `*.log`
    files and empty folders: nothing a user would want to keep."""
    for f in folder.rglob("*"):
        if f.is_file():
            rel = f.relative_to(folder)
            if not (rel.parts[0].startswith(".hydra") or (len(rel.parts) == 1 and f.suffix == ".log")):
                return False
    return True


def _remove_empty_run() -> None:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.RUN:
            return
        folder = Path(hydra_cfg.runtime.output_dir)
    except (ValueError, AttributeError, ImportError):  # not under @hydra.main
        return
    if folder.is_dir() and is_empty_run(folder):
        shutil.rmtree(folder, ignore_errors=True)
        _remove_empty_parents(folder)
    elif folder.is_dir():
        # a resume that failed before training: the config copy it made goes (the name is a
        # time stamp, resolved anew at each access: found by its age), the first run stays as it was
        for copy in folder.glob(".hydra-resume-*"):
            if copy.is_dir() and copy.stat().st_mtime >= _STARTED - 1:
                shutil.rmtree(copy, ignore_errors=True)


def _remove_empty_parents(folder: Path) -> None:
    """The folders above a removed run (`outputs/`, `outputs/<task>/`) when nothing else is in
    them, up to the working folder: a refused first command leaves no empty tree behind."""
    cwd = Path.cwd().resolve()
    parent = folder.resolve().parent
    while parent != cwd and cwd in parent.parents:
        try:
            parent.rmdir()  # only succeeds when empty
        except OSError:
            return
        parent = parent.parent
