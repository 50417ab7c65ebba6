"""Rich styles from the current theme, for DataTable cells and RichLog lines (Rich-only APIs)."""

from __future__ import annotations

from typing import Any

from rich.style import Style
from textual.app import App
from textual.color import Color, ColorParseError


def theme_style(app: App[Any], variable: str, *, bold: bool = False) -> Style:
    """A style coloured by a theme variable; plain when the theme lacks it or it will not parse."""
    value = app.theme_variables.get(variable)
    if not value:
        return Style(bold=bold)
    try:
        color = Color.parse(value)
    except ColorParseError:
        return Style(bold=bold)
    return Style(color=color.rich_color, bold=bold)


DIM = Style(dim=True)
