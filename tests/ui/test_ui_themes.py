"""Theme files, the loader, and the rule that colours live in themes only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from textual.app import App

from fabstir_tui.engine import events as ev
from fabstir_tui.ui import messages as msg
from fabstir_tui.ui.themes import (
    DOMAIN_VARIABLES,
    ThemeFileError,
    domain_defaults,
    load_theme_file,
    load_themes,
    parse_theme,
    shipped_theme_dir,
)

REPO = Path(__file__).resolve().parents[2]
UI = REPO / "fabstir_tui" / "ui"
COLOUR_FIELDS = ("primary", "secondary", "accent", "success", "warning", "error")


def test_shipped_themes_load_in_cycling_order() -> None:
    themes = load_themes(None)
    assert themes.problems == []
    assert themes.names == ["fabstir-dark", "fabstir-light", "fabstir-16"]
    dark, light, sixteen = themes.themes
    assert dark.dark and not light.dark
    for theme in themes.themes:
        assert set(DOMAIN_VARIABLES) <= set(theme.variables), theme.name


def test_the_16_colour_theme_uses_only_ansi_colours() -> None:
    sixteen = load_themes(None).themes[2]
    assert sixteen.ansi
    values = [getattr(sixteen, f) for f in COLOUR_FIELDS] + [
        v for k, v in sixteen.variables.items() if not k.endswith("text-style")
    ]
    assert all(v.startswith("ansi_") for v in values), values


def test_top_level_themes_folder_is_the_packaged_one() -> None:
    top = REPO / "themes"
    assert top.is_dir()
    packaged = Path(str(shipped_theme_dir()))
    assert sorted(p.name for p in top.glob("*.toml")) == sorted(
        p.name for p in packaged.glob("*.toml")
    )
    for path in top.glob("*.toml"):
        assert path.read_bytes() == (packaged / path.name).read_bytes()


def test_a_user_theme_is_added_and_may_replace_a_shipped_one(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text('name = "mine"\nprimary = "#112233"\n')
    (tmp_path / "dark.toml").write_text('name = "fabstir-dark"\nprimary = "#445566"\ndark = true\n')
    (tmp_path / "broken.toml").write_text('name = "broken"\nprimary = "not-a-colour"\n')
    themes = load_themes(tmp_path)
    assert themes.names == ["fabstir-dark", "fabstir-light", "fabstir-16", "mine"]
    assert themes.themes[0].primary == "#445566"
    assert len(themes.problems) == 1 and "broken.toml" in themes.problems[0]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"primary": "#000000"}, "`name`"),
        ({"name": "x"}, "`primary` is required"),
        ({"name": "x", "primary": "#000", "dark": "yes"}, "`dark` must be true or false"),
        ({"name": "x", "primary": "#000", "colour": "#fff"}, "unknown key(s) colour"),
        ({"name": "x", "primary": "#000", "variables": {"a": 1}}, "[variables]"),
        ({"name": "x", "primary": "mauve-ish"}, "x.toml"),
    ],
)
def test_bad_theme_tables_say_what_is_wrong(data: dict[str, object], words: str) -> None:
    with pytest.raises(ThemeFileError, match=re.escape(words)):
        parse_theme(data, "x.toml")


def test_unreadable_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name = \n")
    with pytest.raises(ThemeFileError, match="bad.toml: not valid TOML"):
        load_theme_file(path)


def test_domain_colours_fall_back_to_each_themes_semantic_colours() -> None:
    app: App[None] = App()
    for name in ("textual-dark", "nord", "ansi-dark"):
        theme = app.available_themes[name]
        defaults = domain_defaults(theme)
        assert set(defaults) == set(DOMAIN_VARIABLES)
        generated = theme.to_color_system().generate()
        assert defaults["gpu-hot"] == generated["error"]


def test_styles_name_no_hex_colours() -> None:
    """Colours come from themes: no hex in TCSS files or in widgets' DEFAULT_CSS."""
    hex_colour = re.compile(r"#[0-9a-fA-F]{3,8}\b")
    sources = list((UI / "styles").glob("*.tcss"))
    sources += [p for p in UI.rglob("*.py") if "DEFAULT_CSS" in p.read_text()]
    assert sources
    for path in sources:
        text = path.read_text()
        if path.suffix == ".py":
            text = "\n".join(re.findall(r'DEFAULT_CSS = """(.*?)"""', text, re.S))
        assert not hex_colour.search(text), path


def test_snapshot_messages_replace_older_ones_of_their_kind_only() -> None:
    gpu = ev.GpuSnapshot(available=False, backend="none", reason="off")
    host = ev.HostSnapshot(1.0, 2, 0.1, 1, 2, "/", 1, 2)
    older, newer = msg.GpuSampled(ev.GpuSampled(gpu)), msg.GpuSampled(ev.GpuSampled(gpu))
    assert older.can_replace(newer)
    assert not older.can_replace(msg.HostSampled(ev.HostSampled(host)))
    a1 = msg.ModelHashProgress(ev.ModelHashProgress(path="a", done_bytes=1, total_bytes=9))
    a2 = msg.ModelHashProgress(ev.ModelHashProgress(path="a", done_bytes=5, total_bytes=9))
    b = msg.ModelHashProgress(ev.ModelHashProgress(path="b", done_bytes=5, total_bytes=9))
    assert a1.can_replace(a2)
    assert not a1.can_replace(b)
    loaded = msg.ModelUnloaded(ev.ModelUnloaded(path="a"))
    assert not loaded.can_replace(msg.ModelUnloaded(ev.ModelUnloaded(path="a")))
    assert msg.message_for(ev.NodeStateChanged(state="running")) is not None
    assert msg.GpuSampled.handler_name == "on_engine_gpu_sampled"
