"""`fabstir-tui models list|inspect|run`: what is on disk, what a file is, does it generate."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import Any

from fabstir_tui.commands.output import (
    EXIT_OK,
    EXIT_USAGE,
    emit_json,
    fail,
    human_bytes,
    human_count,
    say,
)
from fabstir_tui.config import Config
from fabstir_tui.engine.events import EventBus, ModelHashProgress, ModelInfo, ModelLoadProgress
from fabstir_tui.engine.inference.gguf_meta import GgufError, read_gguf
from fabstir_tui.engine.inference.manager import ModelManager
from fabstir_tui.engine.inference.registry import ModelRegistry
from fabstir_tui.engine.inference.stream import GenerationRequest, InferenceError
from fabstir_tui.engine.store import Store, StoreError


def _info_json(info: ModelInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


def _print_progress(event: object) -> None:
    if not sys.stderr.isatty():
        return
    if isinstance(event, ModelHashProgress) and event.total_bytes:
        pct = 100 * event.done_bytes / event.total_bytes
        sys.stderr.write(f"\rhashing {Path(event.path).name}: {pct:5.1f} %")
        if event.done_bytes >= event.total_bytes:
            sys.stderr.write("\n")
    elif isinstance(event, ModelLoadProgress):
        sys.stderr.write(f"\rloading: {event.stage:<32} {100 * event.fraction:3.0f} %")
        if event.fraction >= 1.0:
            sys.stderr.write("\n")
    sys.stderr.flush()


async def _drain_progress(bus: EventBus) -> None:
    async for event in bus.subscribe(ModelHashProgress, ModelLoadProgress):
        _print_progress(event)


def models_list(config: Config, as_json: bool) -> int:
    try:
        store = Store(config.paths.data_dir / "node.db")
    except StoreError as exc:
        return fail(str(exc), EXIT_USAGE)
    try:
        registry = ModelRegistry(list(config.paths.models_dirs), store, EventBus())
        models = registry.scan()
    finally:
        store.close()
    if as_json:
        emit_json(
            {
                "models_dirs": [str(d) for d in config.paths.models_dirs],
                "models": [_info_json(m) for m in models],
            }
        )
        return EXIT_OK
    if not models:
        say(
            "no GGUF models found in "
            + ", ".join(str(d) for d in config.paths.models_dirs)
            + " (add a folder with --models-dir or paths.models_dirs)"
        )
        return EXIT_OK
    for m in models:
        if m.error:
            print(f"{m.name:<36} BAD FILE: {m.error}")
            continue
        sha = (m.sha256 or "not hashed yet")[:12]
        print(
            f"{m.name:<36} {m.architecture or '?':<10} {human_count(m.parameters):>7} "
            f"{m.quantisation or '?':<8} ctx {m.context_length or '?':<7} "
            f"{human_bytes(m.size_bytes):>10}  {sha}  {m.path}"
        )
    return EXIT_OK


async def _inspect(config: Config, path: Path) -> ModelInfo:
    store = Store(config.paths.data_dir / "node.db")
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    progress = asyncio.create_task(_drain_progress(bus))
    try:
        registry = ModelRegistry([], store, bus)
        info = registry.inspect(path)
        if info.error is None:
            sha = await registry.hash_now(path)
            info = dataclasses.replace(info, sha256=sha)
        return info
    finally:
        progress.cancel()
        store.close()


def models_inspect(config: Config, path: Path, as_json: bool) -> int:
    try:
        read_gguf(path)  # a bad file is an error here, not a row
        info = asyncio.run(_inspect(config, path))
    except StoreError as exc:
        return fail(str(exc), EXIT_USAGE)
    except (GgufError, OSError) as exc:
        return fail(str(exc))
    if info.error:
        return fail(info.error)
    if as_json:
        emit_json(_info_json(info))
        return EXIT_OK
    rows = [
        ("file", info.path),
        ("name", info.name),
        ("architecture", info.architecture),
        ("parameters", f"{human_count(info.parameters)} ({info.parameters})"),
        ("quantisation", info.quantisation),
        ("context length", info.context_length),
        ("chat template", "yes" if info.has_chat_template else "no"),
        ("size", f"{human_bytes(info.size_bytes)} ({info.size_bytes} bytes)"),
        ("sha256", info.sha256),
    ]
    for key, value in rows:
        print(f"{key:<15} {value}")
    return EXIT_OK


async def _run(config: Config, path: Path, request: GenerationRequest, as_json: bool) -> int:
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    progress = asyncio.create_task(_drain_progress(bus))
    manager = ModelManager(config.inference, bus)
    try:
        model = await manager.load(str(path))
        if request.messages is not None and model.chat_format is None:
            say("note: this model has no chat template; sending the prompt as a transcript")
        stream = manager.generate(model.path, request)
        pieces: list[str] = []
        async for piece in stream:
            pieces.append(piece)
            if not as_json:
                sys.stdout.write(piece)
                sys.stdout.flush()
        st = stream.stats
        if as_json:
            emit_json(
                {
                    "model": model.name,
                    "path": model.path,
                    "text": "".join(pieces),
                    **dataclasses.asdict(st),
                }
            )
        else:
            sys.stdout.write("\n")
            tps = f"{st.tokens_per_s:.1f} tok/s" if st.tokens_per_s else "n/a"
            ttft = f"{st.ttft_s * 1000:.0f} ms" if st.ttft_s is not None else "n/a"
            say(
                f"[{st.prompt_tokens} prompt + {st.completion_tokens} completion tokens, "
                f"first token {ttft}, {tps}, finish: {st.finish_reason}]"
            )
        return EXIT_OK
    except InferenceError as exc:
        return fail(str(exc))
    finally:
        progress.cancel()
        await manager.stop()


def models_run(
    config: Config,
    path: Path,
    prompt: str,
    max_tokens: int,
    temperature: float,
    seed: int,
    raw: bool,
    as_json: bool,
) -> int:
    try:
        info = read_gguf(path)
    except GgufError as exc:
        return fail(str(exc))
    chat = info.has_chat_template and not raw
    request = GenerationRequest(
        prompt=None if chat else prompt,
        messages=({"role": "user", "content": prompt},) if chat else None,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
    )
    return asyncio.run(_run(config, path, request, as_json))
