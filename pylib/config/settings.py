"""Typed settings from environment variables and an optional TOML file, with secrets. Field
aliases are the variable names; a field without an alias whose type is a model is a
*section*. Precedence: defaults < file < environment < secret stores (unset secrets only)."""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from pylib.config.secrets import MissingSecretError, SecretResolver
from pylib.observe.redact import register_secrets

M = TypeVar("M", bound=BaseModel)

_INDEXED = re.compile(r"^(?P<group>[A-Z]+)_(?P<index>\d+)_(?P<key>[A-Z0-9_]+)$")


class ConfigError(Exception):
    """Every problem found in the configuration, each naming the variable at fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


def secret(**kwargs: Any) -> dict[str, Any]:
    """``json_schema_extra`` marking a field as a secret that secret stores may supply."""
    return {"secret": True, **kwargs}


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A list written as ``a, b, c`` in a variable (or as a list in the file).
CommaList = Annotated[list[str], BeforeValidator(_split_commas)]


def one_of(value: str, names: Iterable[str]) -> str:
    """``value`` if it is one of ``names`` (a registry's), else the error a Literal gives."""
    choices = list(names)
    if value in choices:
        return value
    listed = " or ".join([", ".join(repr(n) for n in choices[:-1]), repr(choices[-1])])
    raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": listed})


def sections(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """The model's sections: fields without an alias whose type is a model."""
    found = {}
    for name, info in model.model_fields.items():
        kind = info.annotation
        if info.alias is None and isinstance(kind, type) and issubclass(kind, BaseModel):
            found[name] = kind
    return found


def setting_fields(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    """Every setting's variable name and field, sections' included."""
    inner = sections(model)
    for name, info in model.model_fields.items():
        if name in inner:
            yield from setting_fields(inner[name])
        else:
            yield info.alias or name, info


def secret_names(model: type[BaseModel]) -> list[str]:
    """Variable names of the fields marked as secrets, sections' included."""
    return [
        name
        for name, info in setting_fields(model)
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("secret")
    ]


def _nest(model: type[BaseModel], values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat names into the sections that own them; the rest stay at the top."""
    out = dict(values)
    for section, kind in sections(model).items():
        own = {alias for alias, _ in setting_fields(kind)}
        out[section] = {name: out.pop(name) for name in list(out) if name in own}
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a flat TOML file; a syntax error names the file and line."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc


def group_indexed(values: Mapping[str, Any], groups: tuple[str, ...]) -> dict[str, Any]:
    """Fold ``GROUP_n_KEY`` names of the given groups into ``GROUPS: {n: {KEY: value}}``."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        match = _INDEXED.match(name)
        if match and match["group"] in groups:
            bucket = out.setdefault(match["group"] + "S", {})
            bucket.setdefault(int(match["index"]), {})[match["key"]] = value
        else:
            out[name] = value
    return out


def _location_name(loc: tuple[int | str, ...]) -> str:
    # ("OUTPUTS", 1, "PORT") -> "OUTPUT_1_PORT": the name the user actually wrote.
    if len(loc) == 2 and isinstance(loc[0], str) and loc[0].endswith("S"):
        return f"{loc[0][:-1]}_{loc[1]}"
    if len(loc) == 3 and loc[2] == "[key]":
        return f"{str(loc[0])[:-1]}_{loc[1]}_*"
    if len(loc) >= 3 and isinstance(loc[0], str) and loc[0].endswith("S"):
        return f"{loc[0][:-1]}_{loc[1]}_" + "_".join(str(part) for part in loc[2:])
    return ".".join(str(part) for part in loc) or "(configuration)"


def _describe(error: Mapping[str, Any], section_names: Iterable[str] = ()) -> str:
    loc = tuple(error["loc"])
    if loc and loc[0] in section_names:
        loc = loc[1:]  # the user wrote the flat name, not the section's
    name = _location_name(loc)
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return f"{name}: unknown setting"
    # Echo only a plain, non-secret-looking value: a model-level error's input is everything.
    value = error.get("input")
    plain = isinstance(value, str | int | float | bool) and not isinstance(value, dict)
    secretish = re.search(r"PASS|TOKEN|SECRET|DSN|URL|KEY", name)
    shown = f" (got {value!r})" if loc and plain and not secretish else ""
    return f"{name}: {message}{shown}"


def unknown_variables(
    model: type[BaseModel],
    env: Mapping[str, str],
    *,
    groups: tuple[str, ...] = (),
    ignore: Iterable[str] = (),
    shared_prefixes: Iterable[str] = (),
) -> list[str]:
    """Variables that begin like the model's settings (``FTP_``, ``OUTPUT_``) but are none
    of them, each with the nearest known name: a typo would otherwise pass silently.
    A prefix in ``shared_prefixes`` is also read by a library (``AWS_``): its variables
    are named only when they are close to one of ours. ``ignore``: names used elsewhere."""
    known = [name for name, _ in setting_fields(model)]
    own = set(known) | set(ignore)
    prefixes = {name.split("_", 1)[0] for name in known if "_" in name} | set(groups)
    shared = {prefix.rstrip("_") for prefix in shared_prefixes}
    lines = []
    for name in sorted(env):
        prefix = name.split("_", 1)[0]
        if name in own or "_" not in name or prefix not in prefixes:
            continue
        if prefix in groups:
            if not _INDEXED.match(name):
                lines.append(f"{name}: unknown setting; numbered settings are {prefix}_<n>_<KEY>")
            continue
        cutoff = 0.8 if prefix in shared else 0.6
        # A setting of the same family first: FTP_PASSWORD means FTP_PASS, not MQTT_PASSWORD.
        family = [other for other in known if other.split("_", 1)[0] == prefix]
        nearest = difflib.get_close_matches(
            name, family, n=1, cutoff=cutoff
        ) or difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
        if prefix in shared and not nearest:
            continue
        hint = f"; did you mean {nearest[0]}?" if nearest else ""
        lines.append(f"{name}: unknown setting{hint}")
    return lines


def load_settings(
    model: type[M],
    env: Mapping[str, str],
    file_values: Mapping[str, Any] | None = None,
    *,
    resolver_factory: Callable[[Mapping[str, Any]], SecretResolver] | None = None,
    groups: tuple[str, ...] = (),
    group_secrets: tuple[str, ...] = (),
) -> M:
    """Build and validate the settings; raises :class:`ConfigError` listing every problem."""
    known = {name for name, _ in setting_fields(model)}
    merged: dict[str, Any] = dict(file_values or {})
    for name, value in env.items():
        if name in known or (_INDEXED.match(name) and name.split("_", 1)[0] in groups):
            merged[name] = value
    # An empty value is an unset one (compose writes `${X:-}` as ""): never an empty password.
    merged = {name: value for name, value in merged.items() if value != ""}
    problems: list[str] = []
    if resolver_factory is not None:
        resolver = resolver_factory(merged)
        # Numbered groups that exist may have secrets too: OUTPUT_1_PASSWORD.
        matches = [_INDEXED.match(name) for name in merged]
        present = {f"{m['group']}_{m['index']}" for m in matches if m and m["group"] in groups}
        indexed = sorted(f"{prefix}_{key}" for prefix in present for key in group_secrets)
        try:
            for name in [*secret_names(model), *indexed]:
                if merged.get(name):
                    continue
                try:
                    found = resolver.get(name)
                except Exception as exc:  # a secret store that is down is a config problem
                    problems.append(f"secret store: {exc} (looking up {name})")
                    break  # one line for a store that is down, not one per secret
                if found is not None:
                    merged[name] = found
        finally:
            resolver.close()
    try:
        settings = model.model_validate(_nest(model, group_indexed(merged, groups)))
    except ValidationError as exc:
        problems.extend(_describe(error, sections(model)) for error in exc.errors())
        raise ConfigError(problems) from None
    except MissingSecretError as exc:
        problems.append(str(exc))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    register_secrets(_secret_values(settings))
    return settings


def _secret_values(value: Any) -> list[str]:
    """Every SecretStr inside the settings, however it was supplied, for redaction."""
    if isinstance(value, SecretStr):
        return [value.get_secret_value()]
    if isinstance(value, BaseModel):
        return [
            s for name in type(value).model_fields for s in _secret_values(getattr(value, name))
        ]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _secret_values(item)]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _secret_values(item)]
    return []
