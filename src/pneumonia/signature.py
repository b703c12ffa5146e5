"""The one value checker: a constructor's signature is the schema of its settings.

Types and constraints are declared once, in the signature, with `typing.Annotated` and the
constraint markers of `annotated_types` (`Annotated[int, Ge(1)]`, `Literal["skip", "error"]`).
`check_values` enforces them: classes call it on their own arguments (errors name the bare
argument: `batch_size=0 must be an integer >= 1`), and the config layer calls it on a config
node before building anything (`data.batch_size=0 ...`: the caller adds the key's prefix).

`static_hints` reads a signature from the source file without importing its module, so the
command line's values are checked before torch or Lightning is imported (a fast CLI). A leaf
module: it imports nothing of the project but `errors`.
"""

from __future__ import annotations

import ast
import collections.abc
import functools
import pathlib
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import annotated_types as at

from pneumonia.errors import ConfigError

from annotated_types import Ge, Gt, Le, Lt, MinLen  # the markers a signature uses

__all__ = [
    "Annotated",
    "Ge",
    "Gt",
    "Le",
    "Lt",
    "MinLen",
    "THIRD_PARTY_HINTS",
    "at",
    "check_arguments",
    "check_values",
    "describe",
    "matches",
    "static_hints",
    "with_prefix",
]

# Classes from other libraries whose signatures declare no constraints: the ones we know are
# refused later (torch's "Invalid learning rate"), declared here so the CLI answers at once.
_NON_NEGATIVE = Annotated[float, at.Ge(0)]
_OPTIMIZER = {"lr": _NON_NEGATIVE, "weight_decay": _NON_NEGATIVE, "eps": _NON_NEGATIVE}
THIRD_PARTY_HINTS: dict[str, dict[str, Any]] = {
    "torch.optim.Adam": _OPTIMIZER,
    "torch.optim.AdamW": _OPTIMIZER,
    "torch.optim.SGD": {**_OPTIMIZER, "momentum": _NON_NEGATIVE, "dampening": _NON_NEGATIVE},
}


def matches(value: Any, hint: Any) -> bool | None:
    """True/False when `value` is/is not of the declared type (constraints included); None
    when it cannot be told (a class the config cannot spell, an unresolved name)."""
    if hint is typing.Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        base = matches(value, args[0])
        if base is not True:
            return base
        return all(_satisfies(value, c) for c in args[1:])
    if origin in (typing.Union, types.UnionType):
        results = [matches(value, a) for a in args]
        return True if any(r is True for r in results) else (False if all(r is False for r in results) else None)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is pathlib.Path:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        item = _item_hint(hint)
        if item is None:
            return True
        results = [matches(v, item) for v in value]
        return False if any(r is False for r in results) else (True if all(results) else None)
    if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping):
        return isinstance(value, dict) or hasattr(value, "keys")
    if isinstance(hint, type):
        if isinstance(value, dict) and "_target_" in value:
            return None  # built by instantiate itself
        return isinstance(value, hint)
    return None


def _item_hint(hint: Any) -> Any:
    """The declared type of each item of a list hint (`Sequence[int]`, `list[float]`,
    `tuple[int, ...]`), or None when the items are not declared alike."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return args[0] if len(args) == 2 and args[1] is Ellipsis else None
    return args[0] if len(args) == 1 else None


def _satisfies(value: Any, constraint: Any) -> bool:
    """`value` against one annotated_types marker (Ge, Gt, Le, Lt, Interval, MinLen...)."""
    if isinstance(constraint, at.Interval):
        return all(_satisfies(value, c) for c in constraint)
    checks = {
        at.Ge: lambda v, c: v >= c.ge,
        at.Gt: lambda v, c: v > c.gt,
        at.Le: lambda v, c: v <= c.le,
        at.Lt: lambda v, c: v < c.lt,
        at.MinLen: lambda v, c: len(v) >= c.min_length,
        at.MaxLen: lambda v, c: len(v) <= c.max_length,
    }
    check = checks.get(type(constraint))
    try:
        return True if check is None else bool(check(value, constraint))
    except TypeError:
        return False


def describe(hint: Any) -> str:
    """What a value of type `hint` is, in words: `an integer >= 1`, `one of skip, error`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        words = [w for w in (_constraint_words(c) for c in args[1:]) if w]
        return " ".join([describe(args[0]), " and ".join(words)]) if words else describe(args[0])
    if origin in (typing.Union, types.UnionType):
        parts = list(dict.fromkeys(describe(a) for a in args))
        return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
        pathlib.Path: "a path",
    }
    if hint in names:
        return names[hint]
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        item = _item_hint(hint)
        return "a list" if item is None or item is typing.Any else f"a list of {_plural(describe(item))}"
    if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping):
        return "a mapping"
    return f"a {getattr(hint, '__name__', str(hint))}"


def _plural(words: str) -> str:
    """`an integer >= 1` -> `integers >= 1`; `true or false` -> `true or false`."""
    for single, plural in (
        ("an integer", "integers"),
        ("a number", "numbers"),
        ("a string", "strings"),
        ("a mapping", "mappings"),
    ):
        if words.startswith(single):
            return plural + words[len(single) :]
    return words


def with_prefix(err: ConfigError, prefix: str, names: typing.Iterable[Any]) -> ConfigError:
    """`err` with `prefix` (a config key and its dot, `model.`) put before the bare argument
    name it starts with (`depth=9 ...` -> `model.depth=9 ...`): how the config layer names
    the key of a class's own check. `err` itself when it starts with none of `names`."""
    text = str(err)
    for name in map(str, names):
        if text.startswith(name) and text[len(name) : len(name) + 1] in ("=", " ", ":", "["):
            return ConfigError(prefix + text)
    return err


def _constraint_words(c: Any) -> str:
    if isinstance(c, at.Interval):
        return " and ".join(w for w in (_constraint_words(x) for x in c) if w)
    for kind, attr, sign in ((at.Ge, "ge", ">="), (at.Gt, "gt", ">"), (at.Le, "le", "<="), (at.Lt, "lt", "<")):
        if isinstance(c, kind):
            return f"{sign} {getattr(c, attr)}"
    if isinstance(c, at.MinLen):
        return "(not empty)" if c.min_length == 1 else f"of at least {c.min_length} items"
    return ""


def check_values(hints: dict[str, Any], values: typing.Mapping[str, Any], prefix: str = "") -> None:
    """Each of `values` whose name has a hint against it: a `ConfigError`
    `<prefix><name>=<value> must be <description>` for the first that does not match."""
    for name, value in values.items():
        name = str(name)
        if name.startswith("_") or name not in hints:
            continue
        if matches(value, hints[name]) is False:
            raise ConfigError(f"{prefix}{name}={value!r} must be {describe(hints[name])}")


def hints_of(target: Any) -> dict[str, Any]:
    """The resolved annotations of a class's `__init__` (or a function); {} when they do not resolve."""
    try:
        # mypy: "__init__ of an instance is unsound"; here target is a class and its own __init__ is meant
        return typing.get_type_hints(target.__init__ if isinstance(target, type) else target, include_extras=True)  # type: ignore[misc]
    except Exception:  # annotations that do not resolve: the class checks its own arguments
        return {}


def check_arguments(target: Any, values: typing.Mapping[str, Any]) -> None:
    """`check_values` against `target`'s own signature: what a class calls on its arguments
    (`check_arguments(type(self), locals())`), raising with the bare argument names."""
    check_values(hints_of(target), values)


# ---- signatures read without importing ----------------------------------------------------
_TYPING_NAMES = {
    name: getattr(typing, name)
    for name in (
        "Any",
        "Optional",
        "Union",
        "Literal",
        "List",
        "Dict",
        "Tuple",
        "Sequence",
        "Mapping",
        "Iterable",
        "Callable",
        "Annotated",
    )
}
_NAMESPACE = {
    **_TYPING_NAMES,
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "None": None,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "Path": pathlib.Path,
    "at": at,
    **{name: getattr(at, name) for name in ("Ge", "Gt", "Le", "Lt", "Interval", "MinLen", "MaxLen")},
    "Mapping_": collections.abc.Mapping,
}


def _source_file(module: str) -> Path | None:
    """The .py file of `module` on sys.path, found without importing it or its packages."""
    rel = Path(*module.split("."))
    for entry in sys.path or []:
        base = Path(entry or ".")
        for candidate in (base / rel.with_suffix(".py"), base / rel / "__init__.py"):
            if candidate.is_file():
                return candidate
    # an editable install maps the package through a finder, not sys.path: ask for the top package's spec only
    top = module.split(".")[0]
    spec = sys.modules.get(top)
    if spec is not None and getattr(spec, "__file__", None):
        root = Path(str(spec.__file__)).parent.parent
        for candidate in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


@functools.lru_cache(maxsize=64)
def static_hints(target: str) -> dict[str, Any] | None:
    """The annotations of `target`'s `__init__` ("package.module.Class") read from its source
    with `ast`, evaluated with the typing and annotated_types names only: arguments whose
    annotation names anything else are left out. None when the source cannot be found.
    Follows one `from x import Class` re-export (`pneumonia.models.CustomCNN`)."""
    if target in THIRD_PARTY_HINTS:
        return THIRD_PARTY_HINTS[target]
    module, _, name = target.rpartition(".")
    for _ in range(3):  # re-exports
        path = _source_file(module) if module else None
        if path is None:
            return None
        tree = ast.parse(path.read_text())
        found = _find_init(tree, name)
        if found is not None:
            return _evaluate(found)
        source = _reexport(tree, name, module)
        if source is None:
            return None
        module = source
    return None


def _find_init(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    return item
            return typing.cast(ast.FunctionDef, ast.parse("def __init__(self): pass").body[0])  # none declared
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def _reexport(tree: ast.Module, name: str, module: str) -> str | None:
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            if node.level:
                base = module.split(".")
                return ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            return node.module
    return None


def _evaluate(func: ast.FunctionDef) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    args = [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]
    for arg in args:
        if arg.annotation is None or arg.arg == "self":
            continue
        text = ast.unparse(arg.annotation)
        try:
            hints[arg.arg] = eval(text, {"__builtins__": {}}, dict(_NAMESPACE))  # noqa: S307 (typing names only)
        except Exception:  # a name outside typing/annotated_types: the class itself checks it
            continue
    return hints
