"""Tiny random-weight llama GGUFs that llama.cpp loads in milliseconds: fast, real test models."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType
from gguf.quants import quantize

# Exactly llama-cpp-python's CHATML_CHAT_TEMPLATE, so it guesses chat format "chatml".
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MODEL_NAME = "tiny-llama-test"

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
UNK_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID = range(len(SPECIAL_TOKENS))
SPACE = "\u2581"  # SentencePiece's word-boundary mark
_WORD_TEXT = """
the a an and or of to in on is it that this what who how you your we i me my hello world model
token test node job host user assistant system yes no one two three fabstir tiny llama chat reply
answer question good bad day time price gpu cpu
"""
WORDS = tuple(_WORD_TEXT.split())

# ggml type of the 2-D weights for each file type we can write; 1-D norms stay F32.
WEIGHT_TYPES: dict[LlamaFileType, GGMLQuantizationType] = {
    LlamaFileType.ALL_F32: GGMLQuantizationType.F32,
    LlamaFileType.MOSTLY_F16: GGMLQuantizationType.F16,
    LlamaFileType.MOSTLY_Q8_0: GGMLQuantizationType.Q8_0,
    LlamaFileType.MOSTLY_Q4_0: GGMLQuantizationType.Q4_0,
    LlamaFileType.MOSTLY_Q4_1: GGMLQuantizationType.Q4_1,
}


@dataclass(frozen=True)
class TinyVocab:
    """An SPM ("llama") vocabulary: specials, 256 byte tokens, characters, word prefixes."""

    tokens: list[str]
    scores: list[float]
    types: list[int]


def tiny_vocab() -> TinyVocab:
    """Bytes make any text tokenizable; every prefix of "▁word" lets SPM merge up to it."""
    tokens = list(SPECIAL_TOKENS)
    types = [int(TokenType.UNKNOWN)] + [int(TokenType.CONTROL)] * (len(SPECIAL_TOKENS) - 1)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [int(TokenType.BYTE)] * 256
    pieces: dict[str, None] = {SPACE: None}
    pieces.update((chr(c), None) for c in range(0x21, 0x7F))
    for word in WORDS:
        marked = SPACE + word
        pieces.update((marked[:i], None) for i in range(2, len(marked) + 1))
    tokens += list(pieces)
    types += [int(TokenType.NORMAL)] * len(pieces)
    # Real SPM vocabularies score merges by frequency; any strict order makes merging work.
    scores = [0.0] * (len(SPECIAL_TOKENS) + 256) + [-float(i) for i in range(len(pieces))]
    return TinyVocab(tokens, scores, types)


def tensor_shapes(
    *, n_vocab: int, n_layers: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int
) -> dict[str, tuple[int, ...]]:
    """Every tensor llama.cpp's llama graph needs, numpy order (rows, cols) = ggml (ne1, ne0)."""
    kv = n_embd // n_head * n_head_kv
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (n_vocab, n_embd),
        "output_norm.weight": (n_embd,),
        "output.weight": (n_vocab, n_embd),
    }
    for i in range(n_layers):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (n_embd,),
            f"blk.{i}.attn_q.weight": (n_embd, n_embd),
            f"blk.{i}.attn_k.weight": (kv, n_embd),
            f"blk.{i}.attn_v.weight": (kv, n_embd),
            f"blk.{i}.attn_output.weight": (n_embd, n_embd),
            f"blk.{i}.ffn_norm.weight": (n_embd,),
            f"blk.{i}.ffn_gate.weight": (n_ff, n_embd),
            f"blk.{i}.ffn_down.weight": (n_embd, n_ff),
            f"blk.{i}.ffn_up.weight": (n_ff, n_embd),
        }
    return shapes


def _weights(
    name: str, shape: tuple[int, ...], rng: np.random.Generator, control_ids: list[int]
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Random weights, arranged so generation never picks a control token (see below).

    Residual channel 0 carries a constant: every token embeds a 4 there and no layer writes
    to it. The untied output matrix gives control tokens -100 on that channel, so their
    logits sit far below every other token's and a generation runs to max_tokens (or a stop
    string) instead of ending at a random EOS/<|im_end|>.
    """
    if len(shape) == 1:
        return np.ones(shape, dtype=np.float32)
    w = rng.normal(0.0, 0.02, size=shape).astype(np.float32)
    if name == "token_embd.weight":
        w = rng.normal(0.0, 1.0, size=shape).astype(np.float32)
        w[:, 0] = 4.0
    elif name == "output.weight":
        w = rng.normal(0.0, 0.5, size=shape).astype(np.float32)
        w[:, 0] = 0.0
        w[control_ids, 0] = -100.0
    elif name.endswith(("attn_output.weight", "ffn_down.weight")):
        w[0, :] = 0.0
    return w


def write_tiny_llama(
    path: Path,
    *,
    seed: int = 0,
    context_length: int = 256,
    n_layers: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int | None = None,
    file_type: LlamaFileType = LlamaFileType.ALL_F32,
    chat_template: str | None = CHATML_TEMPLATE,
    name: str = MODEL_NAME,
) -> Path:
    """Write a llama GGUF with random weights and a working SPM tokenizer; deterministic."""
    if file_type not in WEIGHT_TYPES:
        raise ValueError(f"file type {file_type.name} is not one the factory can write")
    n_ff = n_ff if n_ff is not None else 2 * n_embd
    vocab = tiny_vocab()
    rng = np.random.default_rng(seed)
    weight_type = WEIGHT_TYPES[file_type]
    control = [i for i, t in enumerate(vocab.types) if t == int(TokenType.CONTROL)]

    path.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(vocab.tokens))
    w.add_file_type(int(file_type))
    w.add_tokenizer_model("llama")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    shapes = tensor_shapes(
        n_vocab=len(vocab.tokens),
        n_layers=n_layers,
        n_embd=n_embd,
        n_ff=n_ff,
        n_head=n_head,
        n_head_kv=n_head_kv,
    )
    for tensor_name, shape in shapes.items():
        data = _weights(tensor_name, shape, rng, control)
        if len(shape) == 1 or weight_type == GGMLQuantizationType.F32:
            w.add_tensor(tensor_name, data)
        elif weight_type == GGMLQuantizationType.F16:
            w.add_tensor(tensor_name, data.astype(np.float16))
        else:
            w.add_tensor(tensor_name, quantize(data, weight_type), raw_dtype=weight_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def expected_parameters(
    *,
    n_layers: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int | None = None,
) -> int:
    """Parameter count of `write_tiny_llama` with these sizes, summed from the tensor shapes."""
    shapes = tensor_shapes(
        n_vocab=len(tiny_vocab().tokens),
        n_layers=n_layers,
        n_embd=n_embd,
        n_ff=n_ff if n_ff is not None else 2 * n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
    )
    return sum(int(np.prod(s)) for s in shapes.values())


def write_truncated_copy(src: Path, dst: Path, keep_bytes: int | None = None) -> Path:
    """A copy cut short, as an interrupted download leaves it (default: half the file)."""
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: keep_bytes if keep_bytes is not None else len(data) // 2])
    return dst


def write_not_gguf(path: Path, content: bytes = b"this is a text file, not a model\n") -> Path:
    """A file with a .gguf name that is something else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def copy_model(src: Path, dst: Path) -> Path:
    """A second, independent copy (own inode and mtime) of a model file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst
