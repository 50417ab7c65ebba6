"""A token's text on the real SmolLM2 vocabulary: pieces longer than llama-cpp-python's 32-byte
detokenize buffer (runs of spaces in code, markdown rules) come out whole, not as b""."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest

from fabstir_tui.engine.inference import request_text
from fabstir_tui.engine.inference.request_text import token_bytes

LONG_PIECES = "def f():\n" + " " * 32 + "return 1\n" + "-" * 64 + "\n" + "=" * 80 + "\n"


@pytest.mark.parametrize("first_try", [request_text.PIECE_BYTES, 4])
def test_every_piece_of_a_text_with_long_tokens_comes_back_whole(
    smollm_gguf: Path, first_try: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(request_text, "PIECE_BYTES", first_try)  # 4: most pieces ask again
    llm = llama_cpp.Llama(model_path=str(smollm_gguf), vocab_only=True, verbose=False)
    try:
        tokens = llm.tokenize(LONG_PIECES.encode(), add_bos=False)
        pieces = [token_bytes(llm, token) for token in tokens]
        assert b"".join(pieces) == LONG_PIECES.encode()
        assert max(len(piece) for piece in pieces) > 32  # the case the library's buffer drops
    finally:
        llm.close()
