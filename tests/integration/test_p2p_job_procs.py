"""A job across processes: `fabstir-tui demo --headless` (SmolLM2 loaded, P2P on 127.0.0.1, our
client's peer id allowlisted through the environment) streams a greedy completion over
`/fabstir/job/1.0.0` to this test process, and the text equals what `fabstir-tui models run`
computes for the same prompt in a third process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fabstir_tui.client.p2p_job import P2PClient, peer_id_for
from fabstir_tui.engine.p2p.messages import EndFrame, JobRequest, TokenFrame

pytestmark = pytest.mark.slow

EXE = Path(sys.executable).parent / "fabstir-tui"
PROMPT = "The three primary colours are"
MAX_TOKENS = 24
_ADDR = re.compile(r"libp2p host \S+ on .*?(/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+)")


def _cli(config: Path, data_dir: Path) -> list[str]:
    return [str(EXE), "--config", str(config), "--data-dir", str(data_dir)]


def _wait_for(log: Path, proc: subprocess.Popen[bytes], needle: str, limit_s: float) -> str:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if needle in text:
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} never appeared in {log}:\n{log.read_text()[-3000:]}")


async def _stream(addr: str, key_pair: object) -> tuple[str, int, EndFrame, str]:
    async with P2PClient(key_pair=key_pair, timeout_s=60) as client:
        info = await client.info(addr)
        [offer] = [m for m in info.models if "smollm" in m.name.lower()]
        request = JobRequest(
            model_id=offer.id, prompt=PROMPT, max_tokens=MAX_TOKENS, job_id="1", temperature=0.0
        )
        pieces: list[str] = []
        tokens = 0
        frames = 0
        end: EndFrame | None = None
        async for event in client.job(addr, request):
            if isinstance(event, TokenFrame):
                frames += 1
                pieces.append(event.text)
                tokens += event.tokens
            elif isinstance(event, EndFrame):
                end = event
        assert end is not None and frames >= 1
        return "".join(pieces), tokens, end, offer.name


def test_a_job_streams_across_processes_and_matches_a_local_run(
    tmp_path: Path, smollm_gguf: Path
) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair

    key_pair = create_new_key_pair()
    config = tmp_path / "config.toml"
    config.write_text('[telemetry]\ngpu_backend = "none"\n')
    log = tmp_path / "demo.err"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "FABSTIR_P2P__JOB_ALLOWLIST": peer_id_for(key_pair),
    }
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*_cli(config, tmp_path / "data"), "demo", "--headless"],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env=env,
        )
    try:
        text = _wait_for(log, proc, "running headless", 300)
        match = _ADDR.search(text)
        assert match, text[-3000:]
        streamed, tokens, end, name = asyncio.run(_stream(match.group(1), key_pair))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code == 0, log.read_text()[-3000:]
    assert tokens == end.completion_tokens > 0 and end.prompt_tokens > 0
    assert streamed.strip()

    local = subprocess.run(
        [
            *_cli(config, tmp_path / "local"),
            *("models", "run", str(smollm_gguf), "--prompt", PROMPT, "--raw"),
            *("--max-tokens", str(MAX_TOKENS), "--temperature", "0", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert local.returncode == 0, local.stderr
    document = json.loads(local.stdout)
    assert streamed == document["text"], (name, streamed, document["text"])
