"""Write docs/configuration.md from the settings models and the example file's comments.

The models give each setting's name, default, accepted values and whether it is a secret;
``config/snapshot-processor.example.toml`` gives the sections, the order and the words.
``make docs`` rewrites the page; a test fails when the page differs from what this writes.

    python -m tools.settings_doc [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from pylib.config.settings import setting_fields
from snapshot_processor.config import Device, Settings

CHECKOUT = Path(__file__).resolve().parent.parent
EXAMPLE = CHECKOUT / "config" / "snapshot-processor.example.toml"
PAGE = CHECKOUT / "docs" / "configuration.md"

_SECTION = re.compile(r"^# --- (?P<title>.+?) ---$")
# `KEY = value  # words`, possibly commented out; a value is a quoted string or one token.
_SETTING = re.compile(
    r'^#? ?(?P<name>[A-Z][A-Z0-9_]*) = (?P<value>"[^"]*"|\S+)\s*(?:#\s*(?P<words>.*))?$'
)

INTRO = """\
# Configuration

<!-- Written by `make docs` (tools/settings_doc.py) from the settings models and the
comments of config/snapshot-processor.example.toml; edit those, not this page. -->

Settings come from environment variables and, with the same names as keys, from a TOML
file: `--config FILE`, else `$SNAPSHOT_PROCESSOR_CONFIG`, else
`config/snapshot-processor.toml` when it exists. The environment wins over the file; an
empty variable counts as unset. Settings marked *secret* may also come from a file named
like the setting in `SECRETS_DIR` (Docker secrets), or from a 1Password item of that title
(`OP_CONNECT_HOST`, `OP_CONNECT_TOKEN`, `OP_VAULT`), and never appear in a log line.

`snapshot-processor check-config` validates all of it and names the setting at fault; a
variable that looks like a setting but is none (`FTP_PASSWORD`) is named with the nearest
real one, there and at start. `config/snapshot-processor.example.toml` holds every key with
its default.
"""


@dataclass(frozen=True)
class Entry:
    name: str
    example: str
    words: str


def example_sections(text: str) -> Iterator[tuple[str, list[Entry]]]:
    """The example file's sections, each with its settings and their comments."""
    title, entries, notes = "", [], []  # type: ignore[var-annotated]
    for line in text.splitlines():
        if section := _SECTION.match(line):
            if entries:
                yield title, entries
            title, entries, notes = section["title"], [], []
        elif setting := _SETTING.match(line):
            words = " ".join([*notes, setting["words"] or ""]).strip()
            entries.append(Entry(setting["name"], setting["value"], words))
            notes = []
        elif line.startswith("# ") and title:
            notes.append(line[2:].strip())
        else:
            notes = []
    if entries:
        yield title, entries


def _fields() -> dict[str, FieldInfo]:
    fields = dict(setting_fields(Settings))
    for key, info in Device.model_fields.items():
        fields[f"OUTPUT_1_{key}"] = fields[f"INPUT_1_{key}"] = info
    return fields


def _default(info: FieldInfo, name: str) -> str:
    if _is_secret(info, name):
        return "unset"
    if name == "DEVICE_NAME":
        return "the host name"  # a factory's value on this machine would go stale
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None or value == [] or value == "":
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def _is_secret(info: FieldInfo, name: str) -> bool:
    extra = info.json_schema_extra
    return (isinstance(extra, dict) and bool(extra.get("secret"))) or name.endswith("_PASSWORD")


def _kind(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if origin is typing.Literal:
        return " or ".join(f"`{arg}`" for arg in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _kind(args[0])
    if origin is typing.Annotated:
        return _kind(args[0])
    if origin in (list, tuple):
        return "comma-separated list"
    names = {bool: "`true` or `false`", int: "whole number", float: "number", Path: "path"}
    if annotation in names:
        return names[annotation]
    return "text"


def _bounds(info: FieldInfo) -> str:
    words = []
    for item in info.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if isinstance(item, getattr(annotated_types, attr.capitalize())):
                words.append(f"{sign} {getattr(item, attr)}")
    return ", ".join(words)


def _values(info: FieldInfo) -> str:
    kind = _kind(info.annotation)
    bounds = _bounds(info)
    return f"{kind}, {bounds}" if bounds else kind


def render() -> str:
    """The whole page."""
    fields = _fields()
    parts = [INTRO]
    for title, entries in example_sections(EXAMPLE.read_text(encoding="utf-8")):
        parts.append(f"\n## {title[0].upper()}{title[1:]}\n\n")
        parts.append("| Setting | Default | Values | Meaning |\n|---|---|---|---|\n")
        for entry in entries:
            info = fields.get(entry.name)
            if info is None:
                raise SystemExit(f"{EXAMPLE}: {entry.name} is not a setting")
            name = entry.name.replace("_1_", "_n_")
            secret = " *(secret)*" if _is_secret(info, entry.name) else ""
            words = entry.words.replace("|", "\\|") or "—"
            parts.append(
                f"| `{name}`{secret} | {_default(info, entry.name)} | {_values(info)} | {words} |\n"
            )
    return "".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
        if current != page:
            print(f"{PAGE} is stale: run make docs", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page, encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
