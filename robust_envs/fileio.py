"""Reading the files robust_envs depends on so that a bad file is named, with what to do about it.

A truncated JSON, checkpoint or weights file otherwise surfaces as a bare ``JSONDecodeError``, an
``UnpicklingError`` or a ``SafetensorError`` that names no file. Every reader here raises
:class:`CorruptFileError` instead: its message names the file, what is wrong with it, and a remedy
(``hint``: the command that rebuilds it, or where to get it again). Callers that can recover (skip one
result in a table, retrain one checkpoint) catch :class:`CorruptFileError` and warn with its message.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CorruptFileError", "WEIGHT_SUFFIXES", "read_json", "read_safetensors", "read_torch", "weights_digest"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
"""File endings :func:`weights_digest` reads as weights."""


class CorruptFileError(ValueError):
    """A file exists but cannot be read: truncated, not the expected format, or the wrong content.

    Attributes:
        path: the bad file.
        reason: what is wrong with it.
        hint: what to do (a command that rebuilds it, or where to get it again).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, hint: str = "") -> None:
        self.path = Path(path)
        self.reason = reason
        self.hint = hint
        msg = f"{self.path}: {reason}"
        super().__init__(msg + (f"; {hint}" if hint else ""))


def read_json(path: str | os.PathLike[str], hint: str = "delete it and regenerate it") -> Any:
    """Parse a JSON file.

    Args:
        path: the file.
        hint: the remedy named in the error (for example the command that writes this file).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CorruptFileError: if it is not valid UTF-8 JSON (truncated, half-written, binary); the message
            names the file, the position of the error and ``hint``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CorruptFileError(p, f"not UTF-8 text ({err.reason} at byte {err.start})", hint) from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno} column {err.colno}, {len(text)} characters"
        reason = "empty file" if not text.strip() else f"invalid or truncated JSON ({err.msg} at {where})"
        raise CorruptFileError(p, reason, hint) from err


def read_torch(
    path: str | os.PathLike[str],
    hint: str = "copy or download it again",
    map_location: str | torch.device = "cpu",
    weights_only: bool = True,
) -> Any:
    """``torch.load`` a checkpoint (``.pt`` / ``.pth`` / ``.ckpt``), naming the file when it is unreadable.

    Args:
        path: the file.
        hint: the remedy named in the error.
        map_location: where tensors are loaded.
        weights_only: torch's safe unpickler (tensors, containers, numbers, strings); keep True for files
            from elsewhere.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CorruptFileError: if the file is empty, truncated or not a torch checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.stat().st_size == 0:
        raise CorruptFileError(p, "empty file (0 bytes)", hint)
    try:
        return torch.load(p, map_location=map_location, weights_only=weights_only)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        size = p.stat().st_size
        reason = f"not a readable torch checkpoint ({size} bytes; {err.__class__.__name__}: {_first_line(err)})"
        raise CorruptFileError(p, reason, hint) from err


def read_safetensors(path: str | os.PathLike[str], hint: str = "copy or download it again") -> dict[str, torch.Tensor]:
    """Load every tensor of a ``.safetensors`` file on the CPU, naming the file when it is unreadable.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CorruptFileError: if the header or the data is truncated or malformed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {p} does not exist")
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        size = p.stat().st_size
        reason = f"not a readable safetensors file ({size} bytes; {err.__class__.__name__}: {_first_line(err)})"
        raise CorruptFileError(p, reason, hint) from err


def weights_digest(path: str | os.PathLike[str]) -> str:
    """A short identity of a model's weights: the first 16 hex digits of the SHA-256 over its weight files.

    Args:
        path: one weights file, or a folder whose files ending in :data:`WEIGHT_SUFFIXES` (recursively, in
            sorted order of their paths relative to the folder, each hashed with that path) are the weights.

    Results keyed by a model (benchmark entries, pools of x_{t_c}) store it, so retraining a model in place
    (same folder, new weights) makes them stale instead of silently reused.

    Raises:
        FileNotFoundError: if ``path`` does not exist or a folder holds no weights file.
    """
    p = Path(path)
    if p.is_file():
        files = [(p.name, p)]
    elif p.is_dir():
        files = sorted((f.relative_to(p).as_posix(), f) for f in p.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{p} holds no weights file (none ends in {', '.join(WEIGHT_SUFFIXES)})")
    else:
        raise FileNotFoundError(f"weights {p} do not exist")
    digest = hashlib.sha256()
    for name, f in files:
        digest.update(name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else err.__class__.__name__
