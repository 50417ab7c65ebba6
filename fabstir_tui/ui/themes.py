"""Theme files (TOML) turned into Textual themes: the shipped ones plus the operator's own."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from textual.theme import Theme

from fabstir_tui.config import default_config_dir

DEFAULT_THEME = "fabstir-dark"
_SHIPPED_ORDER = {"fabstir-dark": 0, "fabstir-light": 1, "fabstir-16": 2}

COLOUR_FIELDS = (
    "primary",
    "secondary",
    "accent",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
    "success",
    "warning",
    "error",
)
_FLAG_FIELDS = ("dark", "ansi")
_KNOWN_KEYS = frozenset({"name", "variables", *COLOUR_FIELDS, *_FLAG_FIELDS})

# Domain colours our TCSS names; a theme that lacks one borrows the semantic colour named here,
# so Textual's own themes (palette, `ui.theme = "nord"`) never fail to parse our CSS.
DOMAIN_VARIABLES: dict[str, str] = {
    "gpu-bar": "primary",
    "gpu-warm": "warning",
    "gpu-hot": "error",
    "host-bar": "secondary",
    "model-loaded": "success",
}


class ThemeFileError(ValueError):
    """A theme file cannot be used; the message names the file and the problem."""


@dataclass
class ThemeSet:
    """The themes that loaded, in cycling order, and one sentence per file that did not."""

    themes: list[Theme] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [theme.name for theme in self.themes]


def parse_theme(data: Mapping[str, object], source: str) -> Theme:
    """Check one theme table and build it; colours are validated by Textual's own parser."""
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ThemeFileError(f"{source}: unknown key(s) {', '.join(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ThemeFileError(f"{source}: `name` must be a non-empty string")
    colours: dict[str, str] = {}
    for key in COLOUR_FIELDS:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ThemeFileError(f"{source}: `{key}` must be a colour string")
        colours[key] = value
    if "primary" not in colours:
        raise ThemeFileError(f"{source}: `primary` is required")
    flags: dict[str, bool] = {}
    for key in _FLAG_FIELDS:
        value = data.get(key, key == "dark")
        if not isinstance(value, bool):
            raise ThemeFileError(f"{source}: `{key}` must be true or false")
        flags[key] = value
    variables = data.get("variables", {})
    if not isinstance(variables, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
    ):
        raise ThemeFileError(f"{source}: [variables] must map names to strings")
    theme = Theme(
        name=name.strip(),
        primary=colours["primary"],
        secondary=colours.get("secondary"),
        accent=colours.get("accent"),
        foreground=colours.get("foreground"),
        background=colours.get("background"),
        surface=colours.get("surface"),
        panel=colours.get("panel"),
        boost=colours.get("boost"),
        success=colours.get("success"),
        warning=colours.get("warning"),
        error=colours.get("error"),
        dark=flags["dark"],
        ansi=flags["ansi"],
        variables=dict(variables),
    )
    try:
        theme.to_color_system().generate()
    except Exception as exc:  # Textual raises several types for a bad colour
        raise ThemeFileError(f"{source}: {exc}") from exc
    return theme


def load_theme_file(path: Traversable | Path) -> Theme:
    """Read and check one `.toml` theme file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ThemeFileError(f"{path}: cannot read it ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ThemeFileError(f"{path}: not valid TOML ({exc})") from exc
    return parse_theme(data, str(path))


def shipped_theme_dir() -> Traversable:
    """The themes inside the package (top-level `themes/` links here in a checkout)."""
    return resources.files("fabstir_tui") / "themes"


def user_theme_dir() -> Path:
    """Where an operator drops their own theme files."""
    return default_config_dir() / "themes"


def _theme_files(folder: Traversable | Path) -> list[Traversable | Path]:
    if not folder.is_dir():
        return []
    files = [entry for entry in folder.iterdir() if entry.name.endswith(".toml")]
    return sorted(files, key=lambda entry: entry.name)


def load_themes(user_dir: Path | None = None) -> ThemeSet:
    """Shipped themes first (dark, light, 16), then the user's; a user file may replace one."""
    found = ThemeSet()
    by_name: dict[str, Theme] = {}
    shipped = sorted(
        (theme for theme in _load_folder(shipped_theme_dir(), found)),
        key=lambda theme: _SHIPPED_ORDER.get(theme.name, len(_SHIPPED_ORDER)),
    )
    for theme in shipped:
        by_name[theme.name] = theme
    if user_dir is not None:
        for theme in _load_folder(user_dir, found):
            by_name[theme.name] = theme
    found.themes = list(by_name.values())
    return found


def _load_folder(folder: Traversable | Path, found: ThemeSet) -> list[Theme]:
    themes: list[Theme] = []
    for path in _theme_files(folder):
        try:
            themes.append(load_theme_file(path))
        except ThemeFileError as exc:
            found.problems.append(str(exc))
    return themes


def domain_defaults(theme: Theme) -> dict[str, str]:
    """Fallbacks for our domain variables, taken from the theme's own semantic colours."""
    generated = theme.to_color_system().generate()
    return {name: generated[source] for name, source in DOMAIN_VARIABLES.items()}
