"""Streaming GGUF header reader: what a model file is, without reading its weights."""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fabstir_tui.engine.inference.gguf_errors import (
    CorruptGgufError,
    GgufError,
    GgufFileError,
    NotGgufError,
    TruncatedGgufError,
    UnsupportedGgufError,
    check_regular_file,
    describe_start,
    gguf_file_error,
)
from fabstir_tui.engine.inference.gguf_types import file_type_names, ggml_types

__all__ = [
    "CorruptGgufError",
    "GgufError",
    "GgufFileError",
    "GgufInfo",
    "NotGgufError",
    "TensorInfo",
    "TruncatedGgufError",
    "UnsupportedGgufError",
    "read_gguf",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Bounds on every length read from a file, so a hostile header cannot make us allocate
# gigabytes or spin for minutes; real models sit far below each of them.
MAX_KEY_BYTES = 65_535
MAX_STRING_BYTES = 16 * 1024 * 1024
MAX_ARRAY_LEN = 1 << 26
MAX_ARRAY_DEPTH = 4
MAX_KV_COUNT = 1 << 16
MAX_TENSOR_COUNT = 1 << 16
MAX_TENSOR_NAME_BYTES = 1024
MAX_DIMS = 4
MAX_ELEMENTS = (1 << 63) - 1
# Strings longer than this stay out of `GgufInfo.metadata`, which is meant to stay small.
MAX_METADATA_STRING = 1024

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"

_STRING = 8
_ARRAY = 9
_SCALAR_FORMATS: dict[int, str] = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_SCALARS = {code: struct.Struct("<" + fmt) for code, fmt in _SCALAR_FORMATS.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_CHUNK = 1 << 20

Scalar = int | float | bool | str


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor's header entry; dims are in ggml order (fastest-varying first)."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    type_name: str
    offset: int
    n_elements: int
    n_bytes: int


@dataclass(frozen=True, slots=True)
class GgufInfo:
    """What the header of one GGUF file says, plus the checks made against its size."""

    path: str
    version: int
    architecture: str | None
    name: str
    parameters: int
    quantisation: str | None
    context_length: int | None
    has_chat_template: bool
    chat_template: str | None
    file_size: int
    tensor_count: int
    alignment: int
    data_offset: int
    data_end: int
    metadata: dict[str, Scalar] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensors: tuple[TensorInfo, ...] = ()


class _Reader:
    """Sequential little-endian reads that never go past the file's known size."""

    def __init__(self, f: BinaryIO, size: int, path: str) -> None:
        self._f = f
        self.size = size
        self.pos = 0
        self.path = path

    def _short(self, n: int, what: str) -> TruncatedGgufError:
        return TruncatedGgufError(
            self.path,
            f"{self.path} is truncated: its header runs past the end of the file "
            f"({self.size} bytes) while reading {what}; download it again",
            self.pos + n,
            self.size,
        )

    def take(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise self._short(n, what)
        data = self._f.read(n)
        if len(data) != n:  # the file shrank under us
            raise self._short(n, what)
        self.pos += n
        return data

    def peek(self, n: int) -> bytes:
        """Up to n bytes from the current position, which stays where it was."""
        data = self._f.read(n)
        self._f.seek(self.pos)
        return data

    def skip(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self._short(n, what)
        self._f.seek(n, os.SEEK_CUR)
        self.pos += n

    def skip_strings(self, count: int, what: str) -> None:
        """Skip `count` strings scanning big chunks: vocabularies hold 50k-250k of them."""
        pos, window, start = self.pos, b"", self.pos
        for _ in range(count):
            at = pos - start
            if at + 8 > len(window):
                self._f.seek(pos)
                window, start, at = self._f.read(min(_CHUNK, self.size - pos)), pos, 0
                if len(window) < 8:
                    self.pos = pos
                    raise self._short(8, what)
            n = int(_U64.unpack_from(window, at)[0])
            if n > MAX_STRING_BYTES:
                raise CorruptGgufError(
                    self.path,
                    f"{self.path} is damaged: a string in {what} claims {n:,} bytes "
                    f"(at most {MAX_STRING_BYTES:,})",
                )
            if n > self.size - pos - 8:
                self.pos = pos + 8
                raise self._short(n, what)
            pos += 8 + n
        self._f.seek(pos)
        self.pos = pos

    def u32(self, what: str) -> int:
        return int(_U32.unpack(self.take(4, what))[0])

    def u64(self, what: str) -> int:
        return int(_U64.unpack(self.take(8, what))[0])

    def length(self, limit: int, what: str) -> int:
        n = self.u64(what)
        if n > limit:
            raise CorruptGgufError(
                self.path, f"{self.path} is damaged: {what} claims {n:,} (at most {limit:,})"
            )
        return n

    def string(self, limit: int, what: str) -> str:
        n = self.length(limit, f"the length of {what}")
        return self.take(n, what).decode("utf-8", errors="replace")


def _corrupt(path: str, detail: str) -> CorruptGgufError:
    return CorruptGgufError(path, f"{path} is damaged: {detail}")


def _skip_value(r: _Reader, vtype: int, key: str, depth: int) -> int | None:
    """Skip one value we do not keep; returns an array's length, else None."""
    if vtype in _SCALARS:
        r.skip(_SCALARS[vtype].size, f"the value of {key!r}")
        return None
    if vtype == _STRING:
        r.skip(r.length(MAX_STRING_BYTES, f"the length of {key!r}"), f"the value of {key!r}")
        return None
    if vtype != _ARRAY:
        raise _corrupt(r.path, f"metadata {key!r} has unknown value type {vtype}")
    if depth >= MAX_ARRAY_DEPTH:
        raise _corrupt(r.path, f"metadata {key!r} nests arrays deeper than {MAX_ARRAY_DEPTH}")
    etype = r.u32(f"the element type of {key!r}")
    count = r.length(MAX_ARRAY_LEN, f"the length of array {key!r}")
    if etype in _SCALARS:
        r.skip(count * _SCALARS[etype].size, f"the elements of {key!r}")
    elif etype == _STRING:
        r.skip_strings(count, f"the elements of {key!r}")
    elif etype == _ARRAY:
        for _ in range(count):
            _skip_value(r, etype, key, depth + 1)
    else:
        raise _corrupt(r.path, f"array {key!r} has unknown element type {etype}")
    return count


def _read_kv(r: _Reader, key: str, metadata: dict[str, Scalar], arrays: dict[str, int]) -> None:
    vtype = r.u32(f"the type of {key!r}")
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        metadata[key] = fmt.unpack(r.take(fmt.size, f"the value of {key!r}"))[0]
    elif vtype == _STRING:
        n = r.length(MAX_STRING_BYTES, f"the length of {key!r}")
        if n <= MAX_METADATA_STRING or key == CHAT_TEMPLATE_KEY:
            metadata[key] = r.take(n, f"the value of {key!r}").decode("utf-8", errors="replace")
        else:
            r.skip(n, f"the value of {key!r}")
    else:
        count = _skip_value(r, vtype, key, 0)
        if count is not None:
            arrays[key] = count


def _read_tensor(r: _Reader, index: int, alignment: int) -> TensorInfo:
    name = r.string(MAX_TENSOR_NAME_BYTES, f"the name of tensor {index}")
    n_dims = r.u32(f"the dimension count of {name!r}")
    if n_dims > MAX_DIMS:
        raise _corrupt(r.path, f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
    dims = tuple(r.u64(f"the shape of {name!r}") for _ in range(n_dims))
    n_elements = 1
    for d in dims:
        n_elements *= d
        if n_elements > MAX_ELEMENTS:
            raise _corrupt(r.path, f"tensor {name!r} has an impossible shape {dims}")
    ggml_type = r.u32(f"the type of {name!r}")
    offset = r.u64(f"the offset of {name!r}")
    known = ggml_types().get(ggml_type)
    if known is None:
        raise UnsupportedGgufError(
            r.path,
            f"{r.path} uses tensor type {ggml_type} (in {name!r}), which this version of "
            "fabstir-tui does not know",
        )
    type_name, block, type_size = known
    row = dims[0] if dims else 1
    if row % block:
        raise _corrupt(r.path, f"tensor {name!r} rows of {row} do not fit {type_name} blocks")
    if offset % alignment:
        raise _corrupt(r.path, f"tensor {name!r} starts at unaligned offset {offset}")
    n_bytes = n_elements // block * type_size
    return TensorInfo(name, dims, ggml_type, type_name, offset, n_elements, n_bytes)


def _quantisation(metadata: dict[str, Scalar], tensors: list[TensorInfo]) -> str | None:
    """The file type the converter recorded, else the type holding the most parameters."""
    file_type = metadata.get("general.file_type")
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        name = file_type_names().get(file_type)
        if name is not None:
            return name
    weight: Counter[str] = Counter()
    for t in tensors:
        weight[t.type_name] += t.n_elements
    return weight.most_common(1)[0][0] if weight else None


def _parse(r: _Reader, path: Path) -> GgufInfo:
    where = str(path)
    head = r.peek(32)
    if head[:4] != GGUF_MAGIC:
        raise NotGgufError(
            where, f"{where} is not a GGUF model file ({describe_start(head, r.size)})"
        )
    r.skip(4, "the magic")
    version = r.u32("the version")
    if version & 0xFFFF == 0 and version:
        raise UnsupportedGgufError(
            where, f"{where} is a big-endian GGUF file; llama.cpp here reads only little-endian"
        )
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedGgufError(
            where, f"{where} is GGUF version {version}; fabstir-tui reads versions 2 and 3"
        )
    n_tensors = r.length(MAX_TENSOR_COUNT, "the tensor count")
    n_kv = r.length(MAX_KV_COUNT, "the metadata count")

    metadata: dict[str, Scalar] = {}
    arrays: dict[str, int] = {}
    seen: set[str] = set()
    for i in range(n_kv):
        key = r.string(MAX_KEY_BYTES, f"metadata key {i}")
        if key in seen:
            raise _corrupt(where, f"metadata key {key!r} appears twice")
        seen.add(key)
        _read_kv(r, key, metadata, arrays)

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in seen:
        value = metadata.get("general.alignment")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise _corrupt(where, "general.alignment is not a positive integer")
        if value & (value - 1):
            raise _corrupt(where, f"general.alignment {value} is not a power of two")
        alignment = value

    tensors: list[TensorInfo] = []
    names: set[str] = set()
    for i in range(n_tensors):
        t = _read_tensor(r, i, alignment)
        if t.name in names:
            raise _corrupt(where, f"tensor {t.name!r} appears twice")
        names.add(t.name)
        tensors.append(t)

    header_end = r.pos
    data_offset = -(-header_end // alignment) * alignment if tensors else header_end
    data_end = data_offset + max((t.offset + t.n_bytes for t in tensors), default=0)
    if r.size < data_end:
        raise TruncatedGgufError(
            where,
            f"{where} is truncated: the header says tensor data runs to {data_end:,} bytes "
            f"but the file has {r.size:,} bytes; download it again",
            data_end,
            r.size,
        )

    arch = metadata.get("general.architecture")
    architecture = arch if isinstance(arch, str) else None
    ctx = metadata.get(f"{architecture}.context_length") if architecture else None
    template = metadata.get(CHAT_TEMPLATE_KEY)
    chat_template = template if isinstance(template, str) else None
    if chat_template is not None and len(chat_template) > MAX_METADATA_STRING:
        metadata.pop(CHAT_TEMPLATE_KEY)
    general_name = metadata.get("general.name")
    return GgufInfo(
        path=where,
        version=version,
        architecture=architecture,
        name=general_name if isinstance(general_name, str) and general_name else path.stem,
        parameters=sum(t.n_elements for t in tensors),
        quantisation=_quantisation(metadata, tensors),
        context_length=ctx if isinstance(ctx, int) and not isinstance(ctx, bool) else None,
        has_chat_template=bool(chat_template),
        chat_template=chat_template,
        file_size=r.size,
        tensor_count=n_tensors,
        alignment=alignment,
        data_offset=data_offset,
        data_end=data_end,
        metadata=metadata,
        array_lengths=arrays,
        tensors=tuple(tensors),
    )


def read_gguf(path: Path | str) -> GgufInfo:
    """Read a GGUF header (never the weights) and check the file is long enough to load."""
    p = Path(path)
    check_regular_file(p)
    try:
        with p.open("rb", buffering=1 << 16) as f:
            size = os.fstat(f.fileno()).st_size
            return _parse(_Reader(f, size, str(p)), p)
    except OSError as exc:
        raise gguf_file_error(p, exc) from exc
