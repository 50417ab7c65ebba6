"""`fabstir-tui status [--json] [--url URL]`: the running node's snapshot, read from its API
(`GET /v1/node/status`), or why it cannot be read. Exit 0 ok, 1 no answer, 2 usage/config."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

import click

from fabstir_tui.commands.output import EXIT_FAILED, EXIT_OK, EXIT_USAGE, emit_json, fail
from fabstir_tui.config import ConfigError

STATUS_PATH = "/v1/node/status"  # the route engine/api/status.py serves
TIMEOUT_S = 10.0


class StatusUnavailable(Exception):
    """The node's API did not give a status: the sentence says what, why and what to do."""


def url_from_listen(listen: str) -> str:
    """The URL a local client dials for `api.listen` (a wildcard bind is reached on loopback)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def fetch_status(base_url: str, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """GET the status document; StatusUnavailable with a readable reason when there is none."""
    url = base_url.rstrip("/") + STATUS_PATH
    hint = (
        "start the node with the API on (api.enabled = true in the config, then "
        "`fabstir-tui --headless`), or pass --url with the address its API listens on"
    )
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        try:
            detail = _error_sentence(exc.read())
        except (OSError, http.client.HTTPException):
            detail = ""
        raise StatusUnavailable(
            f"{url} answered HTTP {exc.code}{detail}: the node runs but did not give its "
            "status; see its log"
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        why = getattr(reason, "strerror", None) or str(reason)
        raise StatusUnavailable(f"no node answers at {url} ({why}): {hint}") from None
    except (http.client.InvalidURL, ValueError) as exc:  # a port not a number, an open [
        raise StatusUnavailable(f"{url} is not a URL this can dial ({exc})") from None
    # Before OSError: a peer that accepts and hangs up (RemoteDisconnected) is both.
    except http.client.HTTPException as exc:  # not HTTP, or cut off mid-answer
        raise StatusUnavailable(
            f"{url} did not answer in HTTP ({type(exc).__name__}): is that address another "
            "program's, or did the node stop? Pass --url with the node's API address"
        ) from None
    except OSError as exc:  # timeouts, refused or reset connections
        why = exc.strerror or type(exc).__name__
        raise StatusUnavailable(f"no node answers at {url} ({why}): {hint}") from None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise StatusUnavailable(
            f"{url} answered, but not with JSON: is that address another program's? "
            "Pass --url with the node's API address"
        ) from None
    if not isinstance(document, dict) or not all(
        isinstance(document.get(key), str) for key in ("name", "state", "version")
    ):
        raise StatusUnavailable(f"{url} answered JSON that is not a fabstir-tui status document")
    return document


def _error_sentence(body: bytes) -> str:
    """The API's JSON error message, when the refusal carries one."""
    try:
        error = json.loads(body).get("error", {})
    except (ValueError, AttributeError):
        return ""
    message = error.get("message") if isinstance(error, dict) else error
    return f" ({message})" if isinstance(message, str) and message else ""


def _amount(base_units: str, decimals: int) -> str:
    value = int(base_units)
    if decimals <= 0:
        return str(value)
    whole, frac = divmod(value, 10**decimals)
    digits = str(frac).rjust(decimals, "0").rstrip("0")[:6]
    return f"{whole}.{digits}" if digits else str(whole)


def _gpu_line(gpu: dict[str, Any] | None) -> list[str]:
    if gpu is None:
        return ["gpu       (not sampled yet)"]
    if not gpu.get("available"):
        return [f"gpu       none: {gpu.get('reason') or gpu.get('backend')}"]
    lines = []
    for d in gpu.get("devices", []):
        parts = [f"gpu {d['index']}     {d['name']}"]
        if d.get("utilisation_pct") is not None:
            parts.append(f"{d['utilisation_pct']:.0f} %")
        if d.get("memory_used_bytes") is not None and d.get("memory_total_bytes"):
            used, total = d["memory_used_bytes"] >> 20, d["memory_total_bytes"] >> 20
            parts.append(f"{used}/{total} MiB")
        if d.get("temperature_c") is not None:
            parts.append(f"{d['temperature_c']:.0f} °C")
        if d.get("power_w") is not None:
            parts.append(f"{d['power_w']:.0f} W")
        lines.append(", ".join(parts))
    return lines


def _chain_lines(chain: dict[str, Any] | None) -> list[str]:
    if chain is None or not chain.get("enabled"):
        return ["chain     off"]
    sync = "synced" if chain.get("synced") else "catching up"
    reg = "registered" if chain.get("registered") else "not registered"
    lines = [
        f"chain     {chain['chain_id']} via {chain.get('url_host') or '?'}, block "
        f"{chain.get('block')} ({sync}), wallet {chain.get('wallet')}, {reg}"
    ]
    for b in chain.get("balances", []):
        d = b["decimals"]
        lines.append(
            f"earnings  {b['symbol'] or b['token']}: {_amount(b['earned_total'], d)} earned, "
            f"{_amount(b['withdrawable'], d)} withdrawable, "
            f"{_amount(b['held_in_escrow'], d)} in escrow"
        )
    if chain.get("error"):
        lines.append(f"          {chain['error']}")
    return lines


def _api_traffic(api: dict[str, Any] | None) -> str:
    """The API's traffic after its URL; empty for a node too old to report it."""
    if not api or not api.get("running"):
        return ""
    return (
        f" ({api['open_requests']} open, {api['open_websockets']} websockets, "
        f"{api['per_minute']} requests/min, {api['requests_total']} requests, "
        f"{api['errors_total']} errors)"
    )


def human_status(doc: dict[str, Any], url: str) -> str:
    """A few aligned lines an operator reads at a glance."""
    lines = [f"node      {doc['name']} ({doc['state']}), version {doc['version']}"]
    lines.append(f"api       {url}{_api_traffic(doc.get('api'))}")
    models = doc.get("models", {})
    loaded = models.get("loaded", [])
    if not loaded:
        lines.append(f"models    none loaded ({models.get('available', 0)} on disk)")
    for m in loaded:
        s = m["slots"]
        lines.append(
            f"model     {m['name']}: {s['busy']}/{s['capacity']} slots busy, {s['waiting']} waiting"
        )
    lines += _gpu_line(doc.get("gpu"))
    lines += _chain_lines(doc.get("chain"))
    jobs = doc.get("jobs", {})
    pipeline = "" if jobs.get("pipeline_running") else " (job pipeline off)"
    lines.append(
        f"jobs      {jobs.get('queue', 0)} queued, {jobs.get('market', 0)} in the market, "
        f"{jobs.get('done', 0)} done, {jobs.get('sessions_active', 0)} sessions active{pipeline}"
    )
    peers = doc.get("peers", {})
    lines.append(f"peers     {peers.get('connected', 0)} connected, {peers.get('known', 0)} known")
    p2p = doc.get("p2p")
    lines.append(f"p2p       {p2p['peer_id']}" if p2p else "p2p       off")
    return "\n".join(lines)


def run_status(url: str, as_json: bool) -> int:
    """Print the node's status; exit 1 (with the reason, and a JSON document with --json)
    when no node answers."""
    if not url.startswith(("http://", "https://")):
        return fail(f"--url {url!r} must start with http:// or https://", EXIT_USAGE)
    try:
        document = fetch_status(url)
    except StatusUnavailable as exc:
        if as_json:
            emit_json({"url": url, "reachable": False, "error": str(exc)})
        return fail(str(exc), EXIT_FAILED)
    if as_json:
        emit_json(document)
        return EXIT_OK
    try:
        text = human_status(document, url)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # another version's shape
        return fail(
            f"{url} sent a status this version cannot show ({type(exc).__name__}: {exc}); "
            "`fabstir-tui status --json` prints it as it came",
            EXIT_FAILED,
        )
    click.echo(text)
    return EXIT_OK


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--url", help="The node's API base URL (default: from api.listen in the config).")
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool, url: str | None) -> None:
    """The running node's snapshot, read from its API, or why it is down."""
    if url is None:
        try:
            config = ctx.obj.load().config
        except ConfigError as exc:
            ctx.exit(fail(str(exc), EXIT_USAGE))
            return
        url = url_from_listen(config.api.listen)
        if url.endswith(":0"):
            ctx.exit(
                fail(
                    f"api.listen is {config.api.listen!r}: the node takes any free port, so "
                    "this cannot know it; pass --url with the address in the node's log",
                    EXIT_USAGE,
                )
            )
            return
    ctx.exit(run_status(url, as_json))
