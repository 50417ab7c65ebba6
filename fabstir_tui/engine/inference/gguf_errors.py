"""Errors for model files that cannot be used, each with one sentence for the operator."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class GgufError(Exception):
    """A file we cannot use as a GGUF model; the message is one sentence for the operator."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class GgufFileError(GgufError):
    """The path is missing, a directory, or cannot be read."""


class NotGgufError(GgufError):
    """The file does not start with the GGUF magic."""


class UnsupportedGgufError(GgufError):
    """A GGUF file in a form llama.cpp here cannot read (version, byte order, tensor type)."""


class CorruptGgufError(GgufError):
    """The header holds impossible values: a damaged or hostile file."""


class TruncatedGgufError(GgufError):
    """The file ends before its header or tensor data does: an interrupted download."""

    def __init__(self, path: str, message: str, needed_bytes: int, file_bytes: int) -> None:
        super().__init__(path, message)
        self.needed_bytes = needed_bytes
        self.file_bytes = file_bytes


def describe_start(head: bytes, size: int) -> str:
    """Why the first bytes are not GGUF, with a hint for the two usual mistakes."""
    if size == 0:
        return "it is empty"
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the model; fetch the real file with `git lfs pull`"
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype", b"<html")):
        return "it is an HTML page, so the download probably failed"
    shown = head[:8]
    if shown and all(32 <= b < 127 for b in shown):
        return f"it starts with {shown.decode('ascii')!r}"
    return "it starts with bytes " + " ".join(f"{b:02x}" for b in shown)


def gguf_file_error(path: Path | str, exc: OSError) -> GgufFileError:
    """One clear sentence for an OS error on a model path (shared with the hasher)."""
    where = str(path)
    if isinstance(exc, FileNotFoundError):
        return GgufFileError(where, f"{where} does not exist")
    if isinstance(exc, PermissionError):
        return GgufFileError(where, f"cannot read {where}: permission denied")
    if isinstance(exc, IsADirectoryError):
        return GgufFileError(where, f"{where} is a directory, not a GGUF model file")
    return GgufFileError(where, f"cannot read {where}: {exc.strerror or exc}")


def check_regular_file(path: Path | str) -> os.stat_result:
    """Stat a model path, refusing directories and FIFOs (opening a FIFO would block)."""
    where = str(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise gguf_file_error(where, exc) from exc
    if stat.S_ISDIR(st.st_mode):
        raise GgufFileError(where, f"{where} is a directory, not a GGUF model file")
    if not stat.S_ISREG(st.st_mode):
        raise GgufFileError(where, f"{where} is not a regular file")
    return st
