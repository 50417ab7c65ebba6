"""Config loading: layer precedence, provenance, path rules and operator-facing errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fabstir_tui.config import (
    ConfigError,
    LoadedConfig,
    config_as_json,
    format_config_show,
    load_config,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return str(excinfo.value).splitlines()


@pytest.fixture
def no_default(tmp_path: Path) -> Path:
    """A default config location that does not exist, so the real user config never leaks in."""
    return tmp_path / "nowhere" / "config.toml"


def test_defaults_when_nothing_is_given(no_default: Path) -> None:
    loaded = load_config(env={}, default_file=no_default)
    assert loaded.config.inference.threads == 0
    assert loaded.config_file is None
    assert set(loaded.sources.values()) == {"default"}
    assert "inference.threads" in loaded.sources
    assert "paths.models_dirs" in loaded.sources
    assert len(loaded.sources) == len(loaded.values())


def test_each_layer_overrides_the_one_below_key_by_key(tmp_path: Path, no_default: Path) -> None:
    cfg = write(
        tmp_path / "config.toml",
        '[inference]\nthreads = 2\nslots = 2\nbatch_size = 64\n[node]\nname = "from-file"\n',
    )
    env = {
        "FABSTIR_INFERENCE__THREADS": "3",
        "FABSTIR_INFERENCE__SLOTS": "3",
        "FABSTIR_UI__THEME": "env-theme",
    }
    cli: dict[str, object] = {"inference.threads": 4, "ui.refresh_hz": "5", "node.log_level": None}
    loaded = load_config(
        cfg,
        env=env,
        cli=cli,
        cli_labels={"inference.threads": "--threads"},
        default_file=no_default,
    )
    c = loaded.config
    assert (c.inference.threads, c.inference.slots, c.inference.batch_size) == (4, 3, 64)
    assert (c.node.name, c.ui.theme, c.ui.refresh_hz) == ("from-file", "env-theme", 5.0)
    assert c.node.log_level == "info"  # a None flag means "not given"
    assert loaded.sources["inference.threads"] == "flag --threads"
    assert loaded.sources["inference.slots"] == "env FABSTIR_INFERENCE__SLOTS"
    assert loaded.sources["inference.batch_size"] == f"file {cfg}"
    assert loaded.sources["node.name"] == f"file {cfg}"
    assert loaded.sources["ui.theme"] == "env FABSTIR_UI__THEME"
    assert loaded.sources["ui.refresh_hz"] == "flag --ui.refresh_hz"
    assert loaded.sources["node.log_level"] == "default"
    assert loaded.sources["inference.context_length"] == "default"
    assert loaded.config_file == cfg


def test_config_file_comes_from_env_then_default_location(tmp_path: Path) -> None:
    by_env = write(tmp_path / "a" / "config.toml", "[inference]\nthreads = 7\n")
    default = write(tmp_path / "b" / "config.toml", "[inference]\nthreads = 9\n")
    loaded = load_config(env={"FABSTIR_CONFIG": str(by_env)}, default_file=default)
    assert loaded.config.inference.threads == 7
    assert loaded.sources["inference.threads"] == f"file {by_env}"
    loaded = load_config(env={}, default_file=default)
    assert loaded.config.inference.threads == 9
    assert loaded.config_file == default
    explicit = write(tmp_path / "c.toml", "[inference]\nthreads = 11\n")
    loaded = load_config(explicit, env={"FABSTIR_CONFIG": str(by_env)}, default_file=default)
    assert loaded.config.inference.threads == 11


def test_explicitly_named_missing_file_is_an_error(tmp_path: Path, no_default: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as excinfo:
        load_config(missing, env={}, default_file=no_default)
    assert problems(excinfo) == [f"config file {missing} does not exist"]
    with pytest.raises(ConfigError) as excinfo:
        load_config(env={"FABSTIR_CONFIG": str(missing)}, default_file=no_default)
    assert problems(excinfo) == [f"env FABSTIR_CONFIG: config file {missing} does not exist"]


def test_relative_paths_in_file_are_relative_to_the_file(tmp_path: Path, no_default: Path) -> None:
    cfg = write(
        tmp_path / "etc" / "config.toml",
        '[paths]\ndata_dir = "../data"\nmodels_dirs = ["models", "/abs/m", "~/m"]\n'
        '[telemetry]\nreplay_file = "rec.jsonl"\n',
    )
    c = load_config(cfg, env={}, default_file=no_default).config
    assert c.paths.data_dir == tmp_path / "data"
    home = Path("~").expanduser()
    assert c.paths.models_dirs == [tmp_path / "etc" / "models", Path("/abs/m"), home / "m"]
    assert c.telemetry.replay_file == tmp_path / "etc" / "rec.jsonl"


def test_env_paths_expand_home_and_split_lists(no_default: Path) -> None:
    env = {
        "FABSTIR_PATHS__MODELS_DIRS": f"/a{os.pathsep}~/b, /c ,",
        "FABSTIR_PATHS__CACHE_DIR": "~/cache",
        "FABSTIR_PATHS__DATA_DIR": "rel",
    }
    c = load_config(env=env, default_file=no_default).config
    home = Path("~").expanduser()
    assert c.paths.models_dirs == [Path("/a"), home / "b", Path("/c")]
    assert c.paths.cache_dir == home / "cache"
    assert c.paths.data_dir == Path.cwd() / "rel"


def test_cli_paths_and_lists(no_default: Path) -> None:
    cli: dict[str, object] = {"paths.models_dirs": ["~/x", "/y"], "paths.data_dir": Path("~/d")}
    c = load_config(env={}, cli=cli, default_file=no_default).config
    home = Path("~").expanduser()
    assert c.paths.models_dirs == [home / "x", Path("/y")]
    assert c.paths.data_dir == home / "d"


def test_env_text_is_converted_to_the_field_type(no_default: Path) -> None:
    env = {
        "FABSTIR_NODE__READ_ONLY": "yes",
        "FABSTIR_TELEMETRY__INTERVAL_S": "0.5",
        "FABSTIR_TELEMETRY__REPLAY_FILE": "",
        "FABSTIR_NODE__LOG_LEVEL": "debug",
    }
    c = load_config(env=env, default_file=no_default).config
    assert c.node.read_only is True
    assert c.telemetry.interval_s == 0.5
    assert c.telemetry.replay_file is None
    assert c.node.log_level == "debug"


def test_unrelated_fabstir_variables_are_ignored(no_default: Path) -> None:
    env = {
        "FABSTIR_PASSPHRASE_FILE": "/secret",
        "FABSTIR_CRASH_AT": "after_claim",
        "FABSTIR_WHEELHOUSE": "/wheels",
        "FABSTIR_SOMETHING_ELSE": "x",
        "OTHER__THING": "y",
    }
    loaded = load_config(env=env, default_file=no_default)
    assert set(loaded.sources.values()) == {"default"}


def test_file_errors_name_file_key_value_and_what_is_allowed(
    tmp_path: Path, no_default: Path
) -> None:
    cfg = write(
        tmp_path / "config.toml",
        '[inference]\nthreads = -3\nbatch_size = "12"\n'
        '[node]\nlog_level = "loud"\nname = ""\n'
        '[paths]\nmodels_dirs = ["ok", 3]\n',
    )
    with pytest.raises(ConfigError) as excinfo:
        load_config(cfg, env={}, default_file=no_default)
    src = f"file {cfg}"
    assert sorted(problems(excinfo)) == sorted(
        [
            f"{src}: inference.threads = -3 is not allowed: must be ≥ 0",
            f'{src}: inference.batch_size = "12" is not allowed: '
            "must be a whole number, ≥ 1 and ≤ 65536",
            f'{src}: node.log_level = "loud" is not allowed: '
            'must be one of "debug", "info", "warning", "error"',
            f'{src}: node.name = "" is not allowed: must be at least 1 character long',
            f"{src}: paths.models_dirs[1] = 3 is not allowed: must be a path",
        ]
    )


def test_unknown_section_and_key_in_file(tmp_path: Path, no_default: Path) -> None:
    cfg = write(tmp_path / "config.toml", "[inferense]\nthreads = 1\n[ui]\nthem = 'x'\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(cfg, env={}, default_file=no_default)
    section_msg, key_msg = problems(excinfo)
    assert section_msg.startswith(f"file {cfg}: [inferense] is not a known section")
    assert "did you mean inference?" in section_msg
    assert "node, paths, inference, telemetry, chain, p2p, jobs, ui" in section_msg
    assert key_msg.startswith(f"file {cfg}: ui.them is not a known setting")
    assert "did you mean theme?" in key_msg
    assert "theme, refresh_hz" in key_msg


def test_section_that_is_not_a_table(tmp_path: Path, no_default: Path) -> None:
    cfg = write(tmp_path / "config.toml", "inference = 3\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(cfg, env={}, default_file=no_default)
    assert problems(excinfo) == [
        f"file {cfg}: inference = 3 is not allowed: must be a table written as [inference]"
    ]


def test_malformed_toml_reports_the_line(tmp_path: Path, no_default: Path) -> None:
    cfg = write(tmp_path / "config.toml", "[node]\nname = \n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(cfg, env={}, default_file=no_default)
    (msg,) = problems(excinfo)
    assert msg.startswith(f"file {cfg} is not valid TOML: ")
    assert "line 2" in msg


def test_file_that_is_not_utf8(tmp_path: Path, no_default: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_bytes(b'[node]\nname = "\xff"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(cfg, env={}, default_file=no_default)
    assert problems(excinfo)[0].startswith(f"file {cfg} is not valid TOML")


def test_env_errors(no_default: Path) -> None:
    env = {
        "FABSTIR_INFERENCE__THREADS": "many",
        "FABSTIR_INFERENCE__SLOTS": "0",
        "FABSTIR_NOPE__THREADS": "1",
        "FABSTIR_INFERENCE__THREDS": "1",
    }
    with pytest.raises(ConfigError) as excinfo:
        load_config(env=env, default_file=no_default)
    msgs = problems(excinfo)
    assert len(msgs) == 4
    assert (
        "env FABSTIR_INFERENCE__THREADS: inference.threads = many is not allowed: "
        "must be a whole number, ≥ 0 and ≤ 512"
    ) in msgs
    assert "env FABSTIR_INFERENCE__SLOTS: inference.slots = 0 is not allowed: must be ≥ 1" in msgs
    assert any(m.startswith("env FABSTIR_NOPE__THREADS: [nope] is not a known") for m in msgs)
    assert any(
        m.startswith("env FABSTIR_INFERENCE__THREDS: inference.threds is not a known setting")
        for m in msgs
    )


def test_cli_errors_use_the_flag_label(no_default: Path) -> None:
    cli: dict[str, object] = {"inference.seed": "-5", "ui.refresh_hz": 0, "ui.colour": "x"}
    with pytest.raises(ConfigError) as excinfo:
        load_config(
            env={}, cli=cli, cli_labels={"inference.seed": "--seed"}, default_file=no_default
        )
    msgs = problems(excinfo)
    assert "flag --seed: inference.seed = -5 is not allowed: must be ≥ -1" in msgs
    assert "flag --ui.refresh_hz: ui.refresh_hz = 0 is not allowed: must be > 0" in msgs
    assert any(m.startswith("flag --ui.colour: ui.colour is not a known setting") for m in msgs)


def test_all_layers_report_together(tmp_path: Path, no_default: Path) -> None:
    cfg = write(tmp_path / "config.toml", "[inference]\nthreads = -1\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(
            cfg,
            env={"FABSTIR_INFERENCE__SLOTS": "x"},
            cli={"ui.refresh_hz": -1},
            default_file=no_default,
        )
    sources = [m.split(":")[0] for m in problems(excinfo)]
    assert sources == [f"file {cfg}", "env FABSTIR_INFERENCE__SLOTS", "flag --ui.refresh_hz"]


def loaded_sample(tmp_path: Path, no_default: Path) -> LoadedConfig:
    cfg = write(tmp_path / "config.toml", '[paths]\nmodels_dirs = ["/m1", "/m2"]\n')
    return load_config(
        cfg,
        env={"FABSTIR_INFERENCE__THREADS": "6"},
        cli={"node.read_only": True},
        cli_labels={"node.read_only": "--read-only"},
        default_file=no_default,
    )


def test_config_show_table_is_aligned(tmp_path: Path, no_default: Path) -> None:
    loaded = loaded_sample(tmp_path, no_default)
    lines = format_config_show(loaded).splitlines()
    assert lines[0].split() == ["key", "value", "source"]
    assert len(lines) == len(loaded.sources) + 1
    value_col = lines[0].index("value")
    source_col = lines[0].index("source")
    rows = {line.split()[0]: line for line in lines[1:]}
    for line in rows.values():
        assert line[value_col - 2 : value_col] == "  "
        assert line[source_col - 2 : source_col] == "  "
    threads = rows["inference.threads"]
    assert threads[value_col:].split()[0] == "6"
    assert threads[source_col:] == "env FABSTIR_INFERENCE__THREADS"
    assert rows["node.read_only"][value_col:].startswith("true ")
    assert rows["node.read_only"][source_col:] == "flag --read-only"
    assert rows["paths.models_dirs"][value_col:].startswith("/m1, /m2 ")
    assert rows["telemetry.replay_file"][value_col:].startswith("(none) ")


def test_config_as_json_round_trips(tmp_path: Path, no_default: Path) -> None:
    loaded = loaded_sample(tmp_path, no_default)
    doc = json.loads(json.dumps(config_as_json(loaded)))
    assert doc["inference.threads"] == {"value": 6, "source": "env FABSTIR_INFERENCE__THREADS"}
    assert doc["paths.models_dirs"] == {
        "value": ["/m1", "/m2"],
        "source": f"file {tmp_path / 'config.toml'}",
    }
    assert doc["telemetry.replay_file"] == {"value": None, "source": "default"}
    assert set(doc) == set(loaded.sources)


def test_a_batch_smaller_than_the_slots_is_refused_naming_each_source(
    tmp_path: Path, no_default: Path
) -> None:
    rule = "batch_size (3) must be at least slots (4): each batched step decodes one token"
    both = write(tmp_path / "both.toml", "[inference]\nbatch_size = 3\nslots = 4\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(both, env={}, default_file=no_default)
    [problem] = problems(excinfo)
    assert problem.startswith(f"file {both}: inference: {rule}")

    batch = write(tmp_path / "batch.toml", "[inference]\nbatch_size = 3\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(batch, env={"FABSTIR_INFERENCE__SLOTS": "4"}, default_file=no_default)
    [problem] = problems(excinfo)
    assert problem.startswith(f"inference: {rule}")
    assert problem.endswith(
        f"(inference.batch_size from file {batch}, "
        "inference.slots from env FABSTIR_INFERENCE__SLOTS)"
    )
    ok = load_config(batch, env={"FABSTIR_INFERENCE__SLOTS": "3"}, default_file=no_default)
    assert (ok.config.inference.batch_size, ok.config.inference.slots) == (3, 3)

    env = {
        "FABSTIR_API__LISTEN": "127.0.0.1:9",  # same layer, another section: not to blame
        "FABSTIR_INFERENCE__BATCH_SIZE": "3",
        "FABSTIR_INFERENCE__SLOTS": "4",
    }
    with pytest.raises(ConfigError) as excinfo:
        load_config(env=env, default_file=no_default)
    [problem] = problems(excinfo)
    assert problem.startswith(
        "env FABSTIR_INFERENCE__BATCH_SIZE, env FABSTIR_INFERENCE__SLOTS: inference: "
    )
