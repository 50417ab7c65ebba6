"""Prometheus text exposition format 0.0.4, written by hand: small, exact, no global registry
(the node's numbers are read at scrape time, not pushed into process-wide collectors)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

MetricKind = Literal["counter", "gauge"]
Labels = Mapping[str, str]

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def escape_label_value(value: str) -> str:
    """Backslash, double quote and line feed are the three characters the format escapes."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text escapes backslash and line feed (quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float | int | bool) -> str:
    """Integers exactly (wei amounts exceed 2**53), floats in Go's spelling of the specials."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@dataclass(slots=True)
class _Family:
    kind: MetricKind
    help: str
    samples: list[tuple[tuple[tuple[str, str], ...], float | int | bool]] = field(
        default_factory=list
    )


class Exposition:
    """Metric families in first-declared order, each family's samples kept together as the
    format requires, whatever order the collector adds them in."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def declare(self, name: str, kind: MetricKind, help_text: str) -> None:
        """A family with HELP and TYPE even when it has no samples now (e.g. no GPU yet)."""
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a valid metric name")
        family = self._families.get(name)
        if family is None:
            self._families[name] = _Family(kind, help_text)
        elif family.kind != kind:
            raise ValueError(f"{name} declared as {family.kind} and as {kind}")

    def add(
        self,
        name: str,
        kind: MetricKind,
        help_text: str,
        value: float | int | bool,
        labels: Labels | None = None,
    ) -> None:
        """One sample; the family is declared on first use."""
        self.declare(name, kind, help_text)
        pairs = tuple((labels or {}).items())
        for label, _ in pairs:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"{label!r} is not a valid label name")
        self._families[name].samples.append((pairs, value))

    def render(self) -> str:
        lines: list[str] = []
        for name, family in self._families.items():
            lines.append(f"# HELP {name} {escape_help(family.help)}")
            lines.append(f"# TYPE {name} {family.kind}")
            for pairs, value in family.samples:
                if pairs:
                    body = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs)
                    lines.append(f"{name}{{{body}}} {format_value(value)}")
                else:
                    lines.append(f"{name} {format_value(value)}")
        return "\n".join(lines) + "\n"
