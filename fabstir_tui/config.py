"""Typed configuration: defaults < TOML file < FABSTIR_* env < CLI flags (see load_config)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fabstir_tui.config_sources import (
    ConfigError,
    Layer,
    build_config,
    cli_layer,
    env_layer,
    file_layer,
    schema_fields,
    show_value,
)

__all__ = [
    "Config",
    "ConfigError",
    "LoadedConfig",
    "config_as_json",
    "format_config_show",
    "load_config",
]

APP_NAME = "fabstir-tui"


def default_config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME))


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME))


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSection(_Section):
    name: str = Field(default="fabstir-node", min_length=1, max_length=64)
    read_only: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class PathsSection(_Section):
    data_dir: Path = Field(default_factory=default_data_dir)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    models_dirs: list[Path] = Field(default_factory=lambda: [default_data_dir() / "models"])

    @field_validator("data_dir", "cache_dir", "models_dirs", mode="after")
    @classmethod
    def _not_empty(cls, value: Path | list[Path]) -> Path | list[Path]:
        """An empty string would silently mean the current folder (and walk it for models)."""
        for path in value if isinstance(value, list) else [value]:
            if str(path) in ("", "."):
                raise ValueError("must be a folder path, not empty")
        return value


class InferenceSection(_Section):
    threads: int = Field(default=0, ge=0, le=512, description="0 = physical cores")
    n_gpu_layers: int = Field(default=-1, ge=-1, description="-1 = every layer on the GPU")
    context_length: int = Field(default=4096, ge=64, le=1_048_576)
    batch_size: int = Field(default=512, ge=1, le=65536)
    slots: int = Field(default=1, ge=1, le=64)
    flash_attention: bool = Field(
        default=True, description="llama.cpp's fused attention: faster; numbers differ from off"
    )
    main_gpu: int = Field(default=0, ge=0)
    seed: int = Field(default=-1, ge=-1)
    load_timeout_s: float = Field(default=300.0, gt=0)
    max_tokens_default: int = Field(default=256, ge=1)
    load_at_start: list[Path] = Field(
        default_factory=list, description="GGUF files loaded once the node runs (headless nodes)"
    )

    @model_validator(mode="after")
    def _a_step_holds_every_slot(self) -> InferenceSection:
        """llama.cpp aborts the process at load when a batch is smaller than its sequences."""
        if self.batch_size < self.slots:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be at least slots ({self.slots}): "
                "each batched step decodes one token for every slot"
            )
        return self


class TelemetrySection(_Section):
    gpu_backend: Literal["auto", "nvml", "replay", "none"] = "auto"
    replay_file: Path | None = None
    interval_s: float = Field(default=1.0, ge=0.005, le=60)
    slow_interval_s: float = Field(default=30.0, ge=0.005, le=3600)
    history: int = Field(default=120, ge=2, le=10_000)


_ADDRESS = r"^(0x[0-9a-fA-F]{40})?$"


class ChainSection(_Section):
    """Where the node's chain lives; no RPC URL means the chain side is off."""

    chain_id: int = Field(default=31337, ge=1)
    rpc_urls: list[str] = Field(default_factory=list, description="HTTP(S) RPC URLs, failover")
    ws_url: str = Field(default="", description="WebSocket RPC for subscriptions; empty = poll")
    node_registry: str = Field(default="", pattern=_ADDRESS)
    model_registry: str = Field(default="", pattern=_ADDRESS)
    job_marketplace: str = Field(default="", pattern=_ADDRESS)
    host_earnings: str = Field(default="", pattern=_ADDRESS)
    payment_token: str = Field(default="", pattern=_ADDRESS)
    start_block: int = Field(default=0, ge=0, description="first block the follower reads")
    confirmations: int = Field(default=0, ge=0, le=1000)
    log_chunk_blocks: int = Field(default=2000, ge=1, le=1_000_000)
    poll_interval_s: float = Field(default=1.0, ge=0.01, le=600)
    receipt_timeout_s: float = Field(default=120.0, gt=0)
    max_fee_gwei: float = Field(default=50.0, gt=0, description="cap on max fee per gas")
    priority_fee_gwei: float = Field(default=0.001, ge=0)
    l1_fee: Literal["auto", "on", "off"] = "auto"
    low_gas_eth: float = Field(default=0.002, ge=0, description="warn below this ETH balance")
    keystore: Path | None = Field(default=None, description="default: <data_dir>/keystore.json")
    allow_mainnet: bool = False

    @field_validator("rpc_urls", mode="after")
    @classmethod
    def _http_urls(cls, value: list[str]) -> list[str]:
        """A typo'd scheme would otherwise surface later as an opaque connection error."""
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} must start with http:// or https://")
        return value

    @field_validator("ws_url", mode="after")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if value and not value.startswith(("ws://", "wss://")):
            raise ValueError(f"{value!r} must start with ws:// or wss://")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.rpc_urls)


class P2pSection(_Section):
    """The libp2p host: off until enabled; multiaddrs, not URLs."""

    enabled: bool = False
    listen_addrs: list[str] = Field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/4001"])
    bootstrap: list[str] = Field(default_factory=list, description="peers to dial at start")
    identity: Path | None = Field(default=None, description="default: <data_dir>/p2p-identity")
    api_url: str = Field(default="", description="the client API URL peers are told about")
    job_allowlist: list[str] = Field(
        default_factory=list,
        description="peer ids served on /fabstir/job/1.0.0 until the job pipeline exists",
    )
    dht: bool = Field(default=True, description="Kademlia discovery (/fabstir prefix)")
    reprovide_interval_s: float = Field(default=600.0, ge=5, le=86_400)
    announce_interval_s: float = Field(default=30.0, ge=1, le=3600, description="GossipSub")
    mdns: bool = Field(default=False, description="find peers on the LAN by multicast DNS")
    max_handshakes: int = Field(
        default=16, ge=1, le=1024, description="inbound connection upgrades run at once"
    )
    peer_info_interval_s: float = Field(default=60.0, ge=1, le=3600)
    ping_interval_s: float = Field(default=15.0, ge=1, le=3600)

    @field_validator("job_allowlist", mode="after")
    @classmethod
    def _peer_ids(cls, value: list[str]) -> list[str]:
        """A multiaddr pasted here instead of a peer id would silently allow nobody."""
        for peer in value:
            if not re.fullmatch(r"[1-9A-HJ-NP-Za-km-z]{40,64}", peer):
                raise ValueError(f"{peer!r} is not a base58 peer id (like 12D3KooW...)")
        return value

    @field_validator("listen_addrs", "bootstrap", mode="after")
    @classmethod
    def _multiaddrs(cls, value: list[str]) -> list[str]:
        """A host:port typed here would otherwise fail deep inside libp2p."""
        for addr in value:
            if not addr.startswith("/"):
                raise ValueError(f"{addr!r} is not a multiaddr (like /ip4/127.0.0.1/tcp/4001)")
        return value


class JobsSection(_Section):
    """How work is approved: by the operator (manual) or by these rules (auto)."""

    mode: Literal["manual", "auto"] = "manual"
    dry_run: bool = Field(default=False, description="log what auto would do, do nothing")
    price_floor: int = Field(
        default=0, ge=0, description="per million tokens, base units; 0 = any price"
    )
    max_tokens_cap: int = Field(default=4096, ge=1, description="largest max_tokens accepted")
    client_allow: list[str] = Field(default_factory=list, description="empty = any client")
    client_deny: list[str] = Field(default_factory=list, description="beats client_allow")
    gpu_temp_limit_c: float | None = Field(default=None, gt=0, le=150)
    max_queue_depth: int = Field(default=8, ge=1, le=10_000)
    prompt_delivery_s: float = Field(default=60.0, gt=0, le=3600, description="DESIGN 11.8")
    retention_days: float = Field(
        default=7, gt=0, description="days finished jobs stay archived for `verify`"
    )
    verify_top_k: int = Field(
        default=8, ge=1, le=1000, description="output tokens must be in the top k to verify"
    )

    @field_validator("client_allow", "client_deny", mode="after")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        """Stored lower-case so allow/deny compare case-insensitively with chain addresses."""
        for address in value:
            if not re.fullmatch(r"0x[0-9a-fA-F]{40}", address):
                raise ValueError(f"{address!r} is not an address (0x followed by 40 hex digits)")
        return [address.lower() for address in value]


class ApiSection(_Section):
    """The client HTTP API (DESIGN §7): off until enabled; the operator key comes from env
    FABSTIR_API_KEY only, never from this file."""

    enabled: bool = False
    listen: str = Field(default="127.0.0.1:8080", description="host:port; port 0 = any free")
    cors_allow_origins: list[str] = Field(
        default_factory=list, description="browser origins allowed; empty = none"
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    max_connections_per_ip: int = Field(default=64, ge=1, le=100_000)
    requests_per_minute: int = Field(
        default=600, ge=1, le=1_000_000, description="per client address"
    )

    @field_validator("listen", mode="after")
    @classmethod
    def _host_port(cls, value: str) -> str:
        """A multiaddr or a bare port typed here would otherwise fail only at bind time."""
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdecimal() or int(port) > 65535:
            raise ValueError(f"{value!r} is not host:port (like 127.0.0.1:8080)")
        return value


class UiSection(_Section):
    theme: str = "fabstir-dark"
    refresh_hz: float = Field(default=2.0, gt=0, le=30)


class Config(_Section):
    """The whole effective configuration; immutable once loaded."""

    node: NodeSection = Field(default_factory=NodeSection)
    paths: PathsSection = Field(default_factory=PathsSection)
    inference: InferenceSection = Field(default_factory=InferenceSection)
    telemetry: TelemetrySection = Field(default_factory=TelemetrySection)
    chain: ChainSection = Field(default_factory=ChainSection)
    p2p: P2pSection = Field(default_factory=P2pSection)
    jobs: JobsSection = Field(default_factory=JobsSection)
    ui: UiSection = Field(default_factory=UiSection)
    api: ApiSection = Field(default_factory=ApiSection)


@dataclass(frozen=True)
class LoadedConfig:
    """The effective config plus, for every dotted key, the source that set it."""

    config: Config
    sources: dict[str, str]
    config_file: Path | None = None

    def values(self) -> dict[str, object]:
        """Every dotted key with its JSON-ready value, in schema order."""
        dumped = self.config.model_dump(mode="json")
        return {
            f"{section}.{key}": value
            for section, table in dumped.items()
            for key, value in table.items()
        }


def default_config_file() -> Path:
    return default_config_dir() / "config.toml"


def _pick_config_file(
    config_file: Path | None, env: Mapping[str, str], default_file: Path | None
) -> tuple[Path | None, str | None]:
    """Return the file to read and who named it (None: the optional default location)."""
    if config_file is not None:
        return Path(config_file).expanduser().absolute(), ""
    named = env.get("FABSTIR_CONFIG", "")
    if named:
        return Path(named).expanduser().absolute(), "env FABSTIR_CONFIG: "
    path = default_file if default_file is not None else default_config_file()
    return (path, None) if path.is_file() else (None, None)


def load_config(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    cli: Mapping[str, object] | None = None,
    cli_labels: Mapping[str, str] | None = None,
    *,
    default_file: Path | None = None,
) -> LoadedConfig:
    """Merge defaults < TOML file < FABSTIR_* env < flags, or raise ConfigError with every problem.

    `cli` maps dotted keys ("inference.threads") to typed values or strings; None means not
    given. `cli_labels` maps a dotted key to the flag that set it ("--threads") for provenance.
    `env` defaults to os.environ; `default_file` overrides the platform config location.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    fields = schema_fields(Config)
    problems: list[str] = []
    layers: list[Layer] = []
    path, named_by = _pick_config_file(config_file, environ, default_file)
    if path is not None and named_by is not None and not path.exists():
        problems.append(f"{named_by}config file {path} does not exist")
        path = None
    if path is not None:
        layers.append(file_layer(path, fields, problems))
    layers.append(env_layer(environ, fields, problems))
    layers.append(cli_layer(cli or {}, cli_labels or {}, fields, problems))
    config, sources = build_config(Config, layers, problems)
    return LoadedConfig(config=config, sources=sources, config_file=path)


def _cell(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) if value else "(empty)"
    if isinstance(value, str):
        return value
    return show_value(value)


def format_config_show(loaded: LoadedConfig) -> str:
    """An aligned key / value / source table for `fabstir-tui config show`."""
    rows = [("key", "value", "source")]
    rows += [(k, _cell(v), loaded.sources[k]) for k, v in loaded.values().items()]
    key_w = max(len(r[0]) for r in rows)
    value_w = max(len(r[1]) for r in rows)
    lines = [f"{k:<{key_w}}  {v:<{value_w}}  {s}" for k, v, s in rows]
    return "\n".join(line.rstrip() for line in lines)


def config_as_json(loaded: LoadedConfig) -> dict[str, dict[str, object]]:
    """Key -> {value, source} for `fabstir-tui config show --json`."""
    return {
        key: {"value": value, "source": loaded.sources[key]}
        for key, value in loaded.values().items()
    }
