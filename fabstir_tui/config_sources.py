"""Config layers (file, env, flags) with per-key provenance, kept apart from the schema."""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

M = TypeVar("M", bound=BaseModel)
Fields = dict[str, dict[str, FieldInfo]]

ENV_PREFIX = "FABSTIR_"
DEFAULT_SOURCE = "default"


class ConfigError(Exception):
    """Every configuration problem, one sentence a line, so the operator can fix all at once."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass
class Layer:
    """One source's values by dotted key, remembering where each came from for messages."""

    strict: bool
    values: dict[str, object] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    shown: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: object, source: str, shown: str) -> None:
        """Record one value; a later set of the same key in this layer wins."""
        self.values[key] = value
        self.sources[key] = source
        self.shown[key] = shown


def schema_fields(model: type[BaseModel]) -> Fields:
    """Section -> key -> field: the schema is two levels deep, so dotted keys are unique."""
    out: Fields = {}
    for name, info in model.model_fields.items():
        section = info.annotation
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            raise TypeError(f"config field {name} must be a section model")
        out[name] = dict(section.model_fields)
    return out


# --- annotations ----------------------------------------------------------------------------


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        args = get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(rest) < len(args):
            return rest[0], True
    return annotation, False


def _item_type(annotation: Any) -> Any:
    base, _ = _strip_optional(annotation)
    return get_args(base)[0] if get_origin(base) is list else base


def _is_list(annotation: Any) -> bool:
    return get_origin(_strip_optional(annotation)[0]) is list


_TYPE_WORDS: dict[Any, str] = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    str: "text",
    Path: "a path",
}
_BOUNDS: tuple[tuple[type, str, str, str], ...] = (
    (annotated_types.Ge, "ge", "≥", "greater_than_equal"),
    (annotated_types.Gt, "gt", ">", "greater_than"),
    (annotated_types.Le, "le", "≤", "less_than_equal"),
    (annotated_types.Lt, "lt", "<", "less_than"),
)


def _num(value: object) -> str:
    """Write 0.0 as 0 in limits: operators read bounds, not float reprs."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _describe(annotation: Any, metadata: list[Any]) -> str:
    """Say in words what a field accepts, for the 'must be ...' half of a message."""
    base, optional = _strip_optional(annotation)
    if get_origin(base) is list:
        words = f"a list, each item {_describe(get_args(base)[0], [])}"
    elif get_origin(base) is Literal:
        words = "one of " + ", ".join(json.dumps(a) for a in get_args(base))
    else:
        words = _TYPE_WORDS.get(base, getattr(base, "__name__", str(base)))
    limits = [
        f"{sign} {_num(getattr(m, attr))}"
        for m in metadata
        for kind, attr, sign, _ in _BOUNDS
        if isinstance(m, kind)
    ]
    limits += [
        f"at least {m.min_length} characters long"
        for m in metadata
        if isinstance(m, annotated_types.MinLen)
    ]
    limits += [
        f"at most {m.max_length} characters long"
        for m in metadata
        if isinstance(m, annotated_types.MaxLen)
    ]
    if limits:
        words += ", " + " and ".join(limits)
    return words + (" (or left out)" if optional else "")


def _allowed(error: ErrorDetails, info: FieldInfo) -> str:
    """Turn a pydantic error into what the operator may write instead."""
    ctx = error.get("ctx") or {}
    for _, attr, sign, error_type in _BOUNDS:
        if error["type"] == error_type and attr in ctx:
            return f"must be {sign} {_num(ctx[attr])}"
    if error["type"] in ("string_too_short", "string_too_long"):
        word, n = (
            ("least", ctx.get("min_length", 0))
            if error["type"] == "string_too_short"
            else ("most", ctx.get("max_length", 0))
        )
        return f"must be at {word} {n} character{'' if n == 1 else 's'} long"
    if error["type"] == "value_error":
        return str(ctx.get("error", error["msg"]))
    if error["type"] == "string_pattern_mismatch" and "0x" in str(ctx.get("pattern", "")):
        return "must be an address: 0x followed by 40 hex digits (or empty)"
    if len(error["loc"]) > 2:
        return f"must be {_describe(_item_type(info.annotation), [])}"
    return f"must be {_describe(info.annotation, list(info.metadata))}"


# --- values ---------------------------------------------------------------------------------


def show_value(value: object) -> str:
    """Render a value the way it would be written in config.toml."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {show_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "(none)"
    return str(value)


def _show_text(text: str) -> str:
    """Show an env/flag string bare when that is unambiguous, quoted otherwise."""
    return text if re.fullmatch(r"[\w.,:/~+@=-]+", text) else json.dumps(text, ensure_ascii=False)


def _resolve_path(value: object, base: Path) -> object:
    """Expand ~ and anchor a relative path at `base`; leave non-path input for pydantic."""
    if isinstance(value, str) and value == "":
        return value
    if isinstance(value, str | os.PathLike):
        return Path(os.path.normpath(base / Path(value).expanduser()))
    return value


def _prepare(value: object, info: FieldInfo, base: Path) -> object:
    """Apply path rules to a typed value (TOML or an already-typed flag)."""
    if _item_type(info.annotation) is not Path:
        return value
    if _is_list(info.annotation) and isinstance(value, list | tuple):
        return [_resolve_path(v, base) for v in value]
    return _resolve_path(value, base)


def _from_text(text: str, info: FieldInfo, base: Path) -> object:
    """Turn an env/flag string into what the field needs: path lists split on os.pathsep or
    ',', other lists (URLs contain ':') on ',' only."""
    _, optional = _strip_optional(info.annotation)
    if optional and text.strip() == "":
        return None
    if _is_list(info.annotation):
        seps = f",{re.escape(os.pathsep)}" if _item_type(info.annotation) is Path else ","
        parts = re.split(f"[{seps}]", text)
        return _prepare([p.strip() for p in parts if p.strip()], info, base)
    return _prepare(text, info, base)


# --- layers ---------------------------------------------------------------------------------


def _unknown(source: str, section: str, key: str | None, fields: Fields) -> str:
    """Name the unknown section or key and list the known ones (with a guess when close)."""
    if key is None or section not in fields:
        known = list(fields)
        what, guess = (
            f"[{section}] is not a known section",
            difflib.get_close_matches(section, known, 1),
        )
        allowed = "known sections are " + ", ".join(known)
    else:
        known = list(fields[section])
        what, guess = (
            f"{section}.{key} is not a known setting",
            difflib.get_close_matches(key, known, 1),
        )
        allowed = f"known settings in [{section}] are " + ", ".join(known)
    hint = f" (did you mean {guess[0]}?)" if guess else ""
    return f"{source}: {what}{hint}; {allowed}"


def file_layer(path: Path, fields: Fields, problems: list[str]) -> Layer:
    """Read a TOML file; relative paths in it are relative to the file's own folder."""
    source = f"file {path}"
    layer = Layer(strict=True)
    if path.exists() and not path.is_file():
        problems.append(f"{source} is not a regular file")
        return layer
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{source} is not valid TOML: {exc}")
        return layer
    except UnicodeDecodeError:
        problems.append(f"{source} is not valid TOML: it is not UTF-8 text")
        return layer
    except OSError as exc:
        problems.append(f"{source} cannot be read: {exc.strerror or exc}")
        return layer
    for section, table in data.items():
        if section not in fields:
            problems.append(_unknown(source, section, None, fields))
        elif not isinstance(table, dict):
            problems.append(
                f"{source}: {section} = {show_value(table)} is not allowed: "
                f"must be a table written as [{section}]"
            )
        else:
            for key, value in table.items():
                if key not in fields[section]:
                    problems.append(_unknown(source, section, key, fields))
                    continue
                info = fields[section][key]
                layer.set(
                    f"{section}.{key}",
                    _prepare(value, info, path.parent),
                    source,
                    show_value(value),
                )
    return layer


def env_layer(env: Mapping[str, str], fields: Fields, problems: list[str]) -> Layer:
    """Read FABSTIR_<SECTION>__<KEY>; FABSTIR_ names without '__' belong to others."""
    layer = Layer(strict=False)
    cwd = Path.cwd()
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        source = f"env {name}"
        if section not in fields or key not in fields[section]:
            problems.append(_unknown(source, section, key, fields))
            continue
        text = env[name]
        layer.set(
            f"{section}.{key}",
            _from_text(text, fields[section][key], cwd),
            source,
            _show_text(text),
        )
    return layer


def cli_layer(
    cli: Mapping[str, object], labels: Mapping[str, str], fields: Fields, problems: list[str]
) -> Layer:
    """Read dotted-key flag values; None means the flag was not given."""
    layer = Layer(strict=False)
    cwd = Path.cwd()
    for key, value in cli.items():
        if value is None:
            continue
        source = f"flag {labels.get(key, '--' + key)}"
        section, _, name = key.partition(".")
        if section not in fields or name not in fields[section]:
            problems.append(_unknown(source, section, name, fields))
            continue
        info = fields[section][name]
        if isinstance(value, str):
            layer.set(key, _from_text(value, info, cwd), source, _show_text(value))
        else:
            layer.set(key, _prepare(value, info, cwd), source, show_value(value))
    return layer


# --- merging --------------------------------------------------------------------------------


def _nest(flat: Mapping[str, object]) -> dict[str, dict[str, object]]:
    nested: dict[str, dict[str, object]] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    return nested


def _validate_layer(
    model: type[BaseModel], layer: Layer, fields: Fields, problems: list[str]
) -> dict[str, object]:
    """Validate one layer alone so each error names its own source; return the good values."""
    pending = dict(layer.values)
    while True:
        try:
            validated = model.model_validate(_nest(pending), strict=layer.strict)
        except ValidationError as exc:
            bad: set[str] = set()
            for error in exc.errors():
                loc = error["loc"]
                key = ".".join(str(part) for part in loc[:2])
                if key not in pending:  # a rule across a section's values
                    section = f"{loc[0]}." if loc else ""
                    named = {src for k, src in layer.sources.items() if k.startswith(section)}
                    source = ", ".join(sorted(named)) or "config"
                    problems.append(f"{source}: {_rule_broken(error)}")
                    continue
                bad.add(key)
                section, _, name = key.partition(".")
                shown = (
                    f"{key}[{loc[2]}] = {show_value(error['input'])}"
                    if len(loc) > 2
                    else f"{key} = {layer.shown[key]}"
                )
                allowed = _allowed(error, fields[section][name])
                problems.append(f"{layer.sources[key]}: {shown} is not allowed: {allowed}")
            if not bad:
                return {}
            for key in bad:
                del pending[key]
            continue
        out: dict[str, object] = {}
        for key in pending:
            section, _, name = key.partition(".")
            out[key] = getattr(getattr(validated, section), name)
        return out


def build_config(
    model: type[M], layers: list[Layer], problems: list[str]
) -> tuple[M, dict[str, str]]:
    """Lay the layers over the defaults in order; raise ConfigError listing every problem."""
    fields = schema_fields(model)
    sources = {f"{s}.{k}": DEFAULT_SOURCE for s, keys in fields.items() for k in keys}
    effective: dict[str, object] = {}
    for layer in layers:
        for key, value in _validate_layer(model, layer, fields, problems).items():
            effective[key] = value
            sources[key] = layer.sources[key]
    if problems:
        raise ConfigError(problems)
    try:
        return model.model_validate(_nest(effective)), sources
    except ValidationError as exc:  # each layer passed alone: a rule across layers' values
        raise ConfigError([_across_layers(e, sources) for e in exc.errors()]) from exc


def _rule_broken(error: Any) -> str:
    """A section-wide rule's error as `section: sentence` (without pydantic's prefix)."""
    where = ".".join(str(part) for part in error["loc"])
    ctx = error.get("ctx") or {}
    what = str(ctx.get("error", error["msg"])) if error["type"] == "value_error" else error["msg"]
    return f"{where}: {what}" if where else what


def _across_layers(error: Any, sources: dict[str, str]) -> str:
    """A rule broken by values from different sources: say where each of them came from."""
    section = str(error["loc"][0]) if error["loc"] else ""
    came = [f"{key} from {src}" for key, src in sources.items() if key.startswith(f"{section}.")]
    came = [c for c in came if not c.endswith(f" from {DEFAULT_SOURCE}")]
    return _rule_broken(error) + (f" ({', '.join(came)})" if came else "")
