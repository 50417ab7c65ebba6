"""Names and block sizes of ggml tensor types and llama.cpp file types, from `gguf` plus extras."""

from __future__ import annotations

from functools import cache

# ggml types newer than the `gguf` package we pin: name, block size, bytes per block.
_EXTRA_GGML_TYPES: dict[int, tuple[str, int, int]] = {39: ("MXFP4", 32, 17)}
_EXTRA_FILE_TYPES: dict[int, str] = {38: "MXFP4_MOE"}


@cache
def ggml_types() -> dict[int, tuple[str, int, int]]:
    """Imported lazily: `gguf` pulls in numpy, too slow for engine start-up."""
    from gguf.constants import GGML_QUANT_SIZES

    table = {int(t): (t.name, block, size) for t, (block, size) in GGML_QUANT_SIZES.items()}
    table.update(_EXTRA_GGML_TYPES)
    return table


@cache
def file_type_names() -> dict[int, str]:
    """Names as llama.cpp's quantize tool prints them, e.g. 15 -> "Q4_K_M"."""
    from gguf.constants import LlamaFileType

    names = {
        int(ft): ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")
        for ft in LlamaFileType
        if ft is not LlamaFileType.GUESSED
    }
    names.update(_EXTRA_FILE_TYPES)
    return names
