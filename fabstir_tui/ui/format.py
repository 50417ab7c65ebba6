"""Number formatting shared by every panel, so one figure reads the same on every screen."""

from __future__ import annotations

import time

KIB = 1024
MIB = 1024**2
GIB = 1024**3
DASH = "—"


def size_bytes(value: int | None) -> str:
    """A file or memory size in binary units, 3 significant figures (98.2 MiB, 141 GiB)."""
    if value is None:
        return DASH
    for unit, scale in (("TiB", 1024**4), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if value >= scale:
            amount = value / scale
            return f"{amount:.1f} {unit}" if amount < 100 else f"{amount:.0f} {unit}"
    return f"{value} B"


def gib(value: int | None) -> str:
    """GiB with one decimal, for used/total pairs that must line up."""
    return DASH if value is None else f"{value / GIB:.1f}"


def parameters(value: int | None) -> str:
    """A parameter count the way model cards say it (135M, 8.0B, 138K)."""
    if value is None:
        return DASH
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            amount = value / scale
            return f"{amount:.1f}{unit}" if amount < 10 else f"{amount:.0f}{unit}"
    return str(value)


def context(value: int | None) -> str:
    """A context length in tokens; powers of two above 4k as `k` (8k, 128k)."""
    if value is None:
        return DASH
    if value >= 1024 and value % 1024 == 0:
        return f"{value // 1024}k"
    return str(value)


def percent(value: float | None) -> str:
    return DASH if value is None else f"{value:.0f}%"


def seconds(value: float | None) -> str:
    """A short duration: milliseconds below one second, else seconds."""
    if value is None:
        return DASH
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def rate(tokens_per_s: float | None) -> str:
    return DASH if tokens_per_s is None else f"{tokens_per_s:.1f} tok/s"


def clock(ts: float) -> str:
    """Local wall-clock time of an event, as logs show it."""
    return time.strftime("%H:%M:%S", time.localtime(ts))


def short_hash(sha256: str | None, length: int = 8) -> str:
    return DASH if not sha256 else sha256[:length]


def ellipsis(text: str, width: int) -> str:
    """Cut `text` to `width` cells with a trailing ellipsis (ASCII-width text assumed)."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: max(0, width - 1)] + "…"


def token_amount(value: int | None, decimals: int, symbol: str = "") -> str:
    """An exact token amount from base units (no float rounding: money is shown to the unit),
    trailing zeros trimmed: 1.5 ETH, 0.002822 FUSD."""
    if value is None:
        return DASH
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10**decimals)
    text = f"{whole:,}"
    if decimals and frac:
        text += "." + f"{frac:0{decimals}d}".rstrip("0")
    return f"{sign}{text} {symbol}".rstrip()


def gwei(value: int | None) -> str:
    """A gas price in gwei, to 3 significant decimals (base fees on L2 are tiny)."""
    if value is None:
        return DASH
    amount = value / 1e9
    return f"{amount:.3f} gwei" if amount < 100 else f"{amount:.0f} gwei"


def short_hex(value: str, keep: int = 6) -> str:
    """0x1234…abcd: enough of a hash or address to recognise it."""
    if len(value) <= 2 + 2 * keep:
        return value
    return f"{value[: 2 + keep]}…{value[-keep:]}"
