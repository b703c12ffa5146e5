"""`python -m pneumonia.tools.registry`: MLflow's model registry from the command line.

    python -m pneumonia.tools.registry list                       # registered models, their aliases
    python -m pneumonia.tools.registry list pneumonia             # its versions: threshold, validation AUROC, run
    python -m pneumonia.tools.registry alias pneumonia 3 champion # point @champion at version 3
    python -m pneumonia.tools.registry unalias pneumonia champion
    python -m pneumonia.tools.registry show models:/pneumonia@champion

Registering is export.py's step: `python export.py ckpt_path=... register=pneumonia`.
"""

from __future__ import annotations

import sys
from typing import Any

DEFAULT_URI = "sqlite:///outputs/mlflow.db"  # conf/mlflow/default.yaml's tracking_uri


def main(argv: list[str] | None = None) -> int:
    import argparse

    from pneumonia.errors import UserError

    parser = argparse.ArgumentParser(
        prog="python -m pneumonia.tools.registry",
        description="List registered models and versions, set aliases (MLflow).",
    )
    parser.add_argument(
        "--tracking-uri",
        default=DEFAULT_URI,
        help=f"the MLflow store (default {DEFAULT_URI}, from the current folder; http://host:5000)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="registered models, or the versions of one")
    p.add_argument("name", nargs="?")
    p = sub.add_parser("alias", help="point an alias (e.g. champion) at a version")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("alias")
    p = sub.add_parser("unalias", help="remove an alias")
    p.add_argument("name")
    p.add_argument("alias")
    p = sub.add_parser("show", help="the version a models:/ URI names, with its tags")
    p.add_argument("model_uri")
    args = parser.parse_args(argv)
    try:
        print(run(args))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run(args: Any) -> str:
    from pneumonia.tracking import registry
    from pneumonia.tracking.settings import MlflowSettings

    uri = args.tracking_uri
    if uri.startswith("sqlite:///"):
        from pathlib import Path

        path = Path(uri[len("sqlite:///") :]).expanduser()
        if not path.is_file():
            raise registry.RegistryError(
                f"--tracking-uri {uri}: no such store ({path} does not exist; train with "
                f"logger=mlflow or export with register= first)"
            )
    settings = MlflowSettings(tracking_uri=uri)
    client = registry.client(settings)
    if args.command == "list" and not args.name:
        models = client.search_registered_models()
        if not models:
            return f"No registered models in {settings.tracking_uri}"
        lines = [f"{'name':<24} {'versions':>8}  aliases"]
        for m in sorted(models, key=lambda m: m.name):
            n = len(registry.versions(client, m.name))
            aliases = ", ".join(f"@{a}={v}" for a, v in sorted((m.aliases or {}).items()))
            lines.append(f"{m.name:<24} {n:>8}  {aliases or '-'}")
        return "\n".join(lines)
    if args.command == "list":
        model = _model(client, registry, args.name)
        by_version: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            by_version.setdefault(str(version), []).append(f"@{alias}")
        rows = registry.versions(client, args.name)
        lines = [
            f"{'version':>7}  {'aliases':<12} {'threshold':>9} {'method':<10} {'val AUROC (95% CI)':<24} "
            f"{'format':<6} run"
        ]
        for v in rows:
            t = v.tags or {}
            auroc = t.get("val.auroc", "-") + (f" {t['val.auroc.ci95']}" if t.get("val.auroc.ci95") else "")
            lines.append(
                f"{v.version:>7}  {' '.join(by_version.get(str(v.version), [])) or '-':<12} "
                f"{t.get('threshold', '-'):>9} {t.get('threshold_method', '-'):<10} {auroc:<24} "
                f"{t.get('format', '-'):<6} {v.run_id or '-'}"
            )
        return "\n".join(lines) if rows else f"Model '{args.name}' has no versions"
    if args.command == "alias":
        registry.check_alias(args.alias, "alias")
        _model(client, registry, args.name)
        registry.resolve(f"models:/{args.name}/{args.version}", settings)  # one line for an unknown version
        client.set_registered_model_alias(args.name, args.alias, str(args.version))
        return f"models:/{args.name}@{args.alias} -> version {args.version}"
    if args.command == "unalias":
        model = _model(client, registry, args.name)
        if args.alias not in (model.aliases or {}):
            raise registry.RegistryError(
                f"model '{args.name}' has no alias '{args.alias}' (aliases: {', '.join(model.aliases or {}) or 'none'})"
            )
        client.delete_registered_model_alias(args.name, args.alias)
        return f"Removed @{args.alias} from '{args.name}'"
    version = registry.resolve(args.model_uri, settings)
    tags = "\n".join(f"  {k}: {v}" for k, v in sorted((version.tags or {}).items()))
    return (
        f"{args.model_uri} -> version {version.version} of '{version.name}'\n  source: {version.source}\n"
        f"  run: {version.run_id}\n{tags}"
    )


def _model(client: Any, registry: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models())
        raise registry.RegistryError(
            f"no registered model '{name}' (registered: {', '.join(known) or 'none'})"
        ) from None


if __name__ == "__main__":
    raise SystemExit(main())
