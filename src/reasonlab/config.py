"""Frozen config dataclasses: documented once, loaded from YAML, overridden with ``--key value``.

Each entry point has one frozen dataclass. A field's documentation is the string literal written
right after it (as in ``types.SamplingParams``); that text becomes the ``--help`` of its flag, so it
is written once. Precedence, lowest to highest: dataclass default < ``--config file.yaml`` <
command-line ``--key value``. The resolved config is written into the run directory.

Supported field types: ``str``, ``int``, ``float``, ``bool`` (``--flag`` / ``--no-flag``),
``Optional[...]`` of those (the value ``none`` gives ``None``), and ``tuple[...]`` (comma-separated).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

from reasonlab.errors import UsageError

T = TypeVar("T")


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the docstring written under it in the class body (for every base too)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:] + [None]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            docs[f.name] = f.metadata["help"]
    return docs


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _convert(name: str, tp: Any, raw: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, with a clear error."""
    base, optional = _unwrap_optional(tp)
    if raw is None or (optional and isinstance(raw, str) and raw.lower() in ("none", "null", "")):
        if optional:
            return None
        raise UsageError(f"--{name.replace('_', '-')} may not be empty")
    origin = typing.get_origin(base)
    try:
        if origin is tuple:
            args = typing.get_args(base)
            item_tp = args[0] if args else str
            items = raw if isinstance(raw, (list, tuple)) else [s for s in str(raw).split(",") if s != ""]
            return tuple(_convert(name, item_tp, x) for x in items)
        if base is bool:
            if isinstance(raw, bool):
                return raw
            s = str(raw).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if base is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if base is float:
            return float(raw)
        if base is str:
            return str(raw)
        if base is Any:
            return raw
    except (TypeError, ValueError):
        pass
    else:
        return raw
    raise UsageError(f"--{name.replace('_', '-')}: cannot read {raw!r} as {getattr(base, '__name__', base)}")


def _resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--kebab-case`` flag per field of ``cls``, with the field's doc as help.

    Flags default to ``argparse.SUPPRESS`` so that only what the user typed overrides YAML.
    """
    docs = field_docs(cls)
    hints = _resolved_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        flag = "--" + f.name.replace("_", "-")
        base, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        help_text = f"{docs.get(f.name, '')} (default: {default!r})"
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text, dest=f.name)
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, help=help_text, dest=f.name, metavar=f.name.upper())
    parser.add_argument("--config", default=None, dest="config_file", metavar="YAML",
                        help="YAML file of settings; flags given on the command line win over it")


def build(cls: type[T], values: dict[str, Any] | None = None) -> T:
    """Instantiate ``cls`` from a dict, converting types and rejecting unknown keys."""
    values = dict(values or {})
    hints = _resolved_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UsageError(f"unknown setting(s) for {cls.__name__}: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {k: _convert(k, hints[k], v) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(f"invalid {cls.__name__}: {e}") from e


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"config file {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise UsageError(f"config file {p} must hold a mapping of settings, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def parse_mapping(text: str, what: str) -> dict[str, Any]:
    """A YAML/JSON mapping given as one command-line string (e.g. ``--task-options '{a: 1}'``); empty -> {}.

    ``what`` names the option in the error message.
    """
    if not text.strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"{what} is not valid YAML/JSON: {e}") from e
    if not isinstance(data, dict):
        raise UsageError(f"{what} must be a mapping, got {text!r}")
    return data


def from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    """Resolve defaults < YAML (``--config``) < flags into a frozen ``cls`` instance."""
    values: dict[str, Any] = {}
    cfg_file = getattr(ns, "config_file", None)
    if cfg_file:
        values.update(load_yaml(cfg_file))
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(ns).items() if k in names})
    return build(cls, values)


def parse(cls: type[T], argv: list[str] | None = None, prog: str | None = None) -> T:
    parser = argparse.ArgumentParser(prog=prog, description=inspect.getdoc(cls))
    add_arguments(parser, cls)
    return from_namespace(cls, parser.parse_args(argv))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return to_dict(v)
        return v
    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def save(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
