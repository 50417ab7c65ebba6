"""Signed job receipts end to end: a real Node on 127.0.0.1 with a real anvil chain side and
the tiny GGUF loaded; a real libp2p client runs jobs and fetches receipts by hash."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from fabstir_tui.client.p2p import P2PRefused
from fabstir_tui.client.p2p_job import JobEvent, P2PClient, peer_id_for
from fabstir_tui.config import (
    ChainSection,
    Config,
    InferenceSection,
    P2pSection,
    PathsSection,
    TelemetrySection,
)
from fabstir_tui.engine.chain import Anvil
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.p2p.messages import EndFrame, JobRequest, TokenFrame
from fabstir_tui.engine.p2p.receipt_protocol import ReceiptBook
from fabstir_tui.engine.p2p.request_auth import AuthDomain
from fabstir_tui.engine.proofs import parse_receipt, receipt_hash, verify_receipt

LOCAL = "/ip4/127.0.0.1/tcp/0"
MARKET = "0x" + "4d" * 20
PASSPHRASE = "receipt test passphrase"
PROMPT = "Once upon a time"


async def _run(client: P2PClient, addr: str, request: JobRequest) -> list[JobEvent]:
    return [event async for event in client.job(addr, request)]


@pytest.mark.slow
async def test_a_job_end_carries_a_signed_receipt_served_by_hash(
    tmp_path: Path, tiny_gguf: Path, devchain: Anvil
) -> None:
    from eth_account import Account
    from eth_utils.crypto import keccak
    from libp2p.crypto.ed25519 import create_new_key_pair

    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.gguf").write_bytes(tiny_gguf.read_bytes())
    model_sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    data = tmp_path / "data"
    data.mkdir()
    host_key = Account.create()
    (data / "keystore.json").write_text(json.dumps(Account.encrypt(host_key.key, PASSPHRASE)))
    client_key = create_new_key_pair()
    config = Config(
        paths=PathsSection(data_dir=data, cache_dir=tmp_path / "cache", models_dirs=[models]),
        inference=InferenceSection(threads=1),
        telemetry=TelemetrySection(gpu_backend="none"),
        chain=ChainSection(
            chain_id=devchain.chain_id,
            rpc_urls=[devchain.http_url],
            job_marketplace=MARKET,
        ),
        p2p=P2pSection(enabled=True, listen_addrs=[LOCAL], job_allowlist=[peer_id_for(client_key)]),
    )
    node = Node(config)
    await node.start()
    try:
        async with asyncio.timeout(60):
            while any(m.sha256 is None for m in node.list_models()):
                await asyncio.sleep(0.05)
        [tiny] = node.list_models()
        assert tiny.sha256 == model_sha
        await node.load_model(tiny.path)
        status = node.p2p_status()
        assert status is not None
        [addr] = [a for a in status.listen_addrs if a.startswith("/ip4/127.0.0.1/")]
        request = JobRequest(
            model_id=model_sha, prompt=PROMPT, max_tokens=8, job_id="7", temperature=0.0
        )
        domain = AuthDomain.from_config(config)

        async with P2PClient(key_pair=client_key) as client:
            locked = await _run(client, addr, request)
            assert isinstance(locked[-1], EndFrame)
            assert locked[-1].receipt is None  # key locked: no receipt, never a fake
            said = [r.message for r in node.recent_logs() if r.source == "p2p"]
            assert any("no receipt for this job: the node key is locked" in m for m in said)

            await node.unlock_wallet(PASSPHRASE)
            events = await _run(client, addr, request)
            end = events[-1]
            assert isinstance(end, EndFrame)
            assert end.receipt is not None
            text = "".join(p for e in events[:-1] if isinstance(e, TokenFrame) for p in e.pieces)
            signed = parse_receipt(end.receipt)
            signer = verify_receipt(signed, domain, expected_signer=host_key.address)
            assert signer == host_key.address
            receipt = signed.receipt
            assert text  # the hash below commits to real streamed text
            assert receipt.output_hash == "0x" + keccak(text.encode("utf-8")).hex()
            assert receipt.prompt_hash == "0x" + keccak(PROMPT.encode("utf-8")).hex()
            assert receipt.model_hash == "0x" + model_sha
            assert receipt.prompt_tokens == end.prompt_tokens
            assert receipt.completion_tokens == end.completion_tokens > 0
            assert (receipt.job_id, receipt.session_id) == (7, 0)

            wanted = "0x" + receipt_hash(receipt, domain).hex()
            fetched = await client.receipt(addr, wanted)
            assert fetched == signed
            assert ReceiptBook(data / "blobs").load(wanted) == signed  # durable on disk

            with pytest.raises(P2PRefused) as refused:
                await client.receipt(addr, "0x" + "ab" * 32)
            assert refused.value.code == "not_found"
            with pytest.raises(P2PRefused) as refused:
                await client.receipt(addr, "0x1234")
            assert refused.value.code == "malformed"
    finally:
        await node.stop()
