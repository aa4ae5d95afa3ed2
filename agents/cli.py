"""Command-line parsing for CleanRL-style ``Args`` dataclasses (one docstring per field becomes its help).

CleanRL uses ``tyro`` for this; it is not a dependency here, so :func:`parse_args` builds an ``argparse``
parser from the dataclass fields, their types, defaults and the string literal that follows each field.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

__all__ = ["field_docs", "parse_args"]

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """Map each field of dataclass ``cls`` to the docstring written under it (``""`` when none)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:] + [None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            is_doc = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)
            docs[node.target.id] = " ".join(nxt.value.value.split()) if is_doc else ""  # type: ignore[union-attr]
    return docs


def _str_to_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def parse_args(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None) -> T:
    """Parse ``argv`` into an instance of dataclass ``cls``; ``--help`` lists every field with its docstring.

    Supported field types: ``int``, ``float``, ``str``, ``bool`` (``--flag true/false``), their
    ``X | None`` forms (pass ``none``), and ``tuple[X, ...]`` (space-separated values).

    Raises:
        SystemExit: on ``--help`` or an unparsable value (argparse's behaviour).
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    parser = argparse.ArgumentParser(description=description or (cls.__doc__ or "").strip().splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint = hints[f.name]
        kwargs: dict[str, Any] = {"default": f.default, "help": (docs.get(f.name) or " ").replace("%", "%%")}
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = type(None) in typing.get_args(hint)
        base = args[0] if optional and len(args) == 1 else hint
        origin = typing.get_origin(base)
        if origin is tuple:
            kwargs["nargs"] = "+"
            kwargs["type"] = typing.get_args(base)[0]
        elif base is bool:
            kwargs["type"] = _str_to_bool
            kwargs["metavar"] = "BOOL"
        else:
            convert = base

            def parse(text: str, convert: Any = convert, optional: bool = optional) -> Any:
                return None if optional and text.lower() == "none" else convert(text)

            parse.__name__ = getattr(convert, "__name__", "value")
            kwargs["type"] = parse
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)
    namespace = parser.parse_args(argv)
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(namespace).items()}
    return cls(**values)
