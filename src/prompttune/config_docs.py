"""The config explained by its own models: every key's path, type, default and description (``prompttune config``),
a complete commented starting config (``--defaults``) and a JSON Schema for editors (``--schema``).

One source of truth: everything here is read from the pydantic models of :mod:`prompttune.config` and, for each
method's own options, :data:`prompttune.schemas.METHOD_OPTIONS`. Torch-free, like the config layer.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .config import MethodConfig, RunConfig
from .errors import ConfigError
from .schemas import DEFAULT_METHOD, METHOD_OPTIONS

SCHEMA_FILE = "prompttune.schema.json"  # where the --defaults header tells editors to look (written by --schema)


@dataclass(frozen=True)
class Key:
    path: str         # dotted, as --set writes it: train.lr, method.num_tokens
    type: str         # as a person reads it: int | None, 'right' | 'left'
    default: Any      # the value a missing key takes (JSON-able)
    description: str


def type_text(annotation) -> str:
    """An annotation as a short readable type: ``int | None``, ``'float32' | 'bfloat16'``, ``list[str]``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_text(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return "mapping" if issubclass(annotation, BaseModel) and annotation.__name__ == "DatasetSpec" else annotation.__name__
    return str(annotation)


def _is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation is not MethodConfig


def _default(field) -> Any:
    if field.default is PydanticUndefined and field.default_factory is None:
        return None
    value = field.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def model_keys(model: type[BaseModel], prefix: str = "") -> list[Key]:
    """Every leaf key of a config model, sections walked into (a section that may be None is walked too)."""
    out: list[Key] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        section = annotation if _is_section(annotation) else inner[0] if len(inner) == 1 and _is_section(inner[0]) else None
        if section is not None and section.__name__ != "DatasetSpec":
            out += model_keys(section, path + ".")
        elif annotation is MethodConfig:
            out += method_keys(None, path + ".")
        else:
            out.append(Key(path, type_text(annotation), _default(field), field.description or ""))
    return out


def method_keys(method: str | None, prefix: str = "method.") -> list[Key]:
    """``method.name``, and with ``method`` given that method's own options (written beside ``name``)."""
    name_field = MethodConfig.model_fields["name"]
    out = [Key(prefix + "name", " | ".join(repr(m) for m in METHOD_OPTIONS), DEFAULT_METHOD, name_field.description or "")]
    if method is not None:
        out += model_keys(method_options(method), prefix)
    return out


def method_options(method: str) -> type[BaseModel]:
    options = METHOD_OPTIONS.get(method)
    if options is None:
        raise ConfigError(f"unknown method {method!r}", where="--method",
                          fix=f"use one of: {', '.join(METHOD_OPTIONS)}")
    return options


def all_keys(method: str | None = None) -> list[Key]:
    keys = model_keys(RunConfig)
    if method is not None:
        at = next(i for i, k in enumerate(keys) if k.path == "method.name")
        keys[at + 1:at + 1] = model_keys(method_options(method), "method.")
    return keys


def shown(value: Any) -> str:
    """A default on one line, as JSON writes it (which YAML reads): ``null``, ``[]``, ``"Review: {text}\\n..."``."""
    return json.dumps(value, ensure_ascii=False)


# ---- --defaults: a commented starting config ----------------------------------------------------------------------
def defaults_yaml(method: str | None = None) -> str:
    """Every key with its default and its description as a comment; loads back to exactly the defaults (with
    ``method``: that method, its options written out at their defaults)."""
    lines = ["# prompttune run config: every key at its default (`prompttune config` explains them). Delete what you",
             f"# do not change. Editors check and complete it after `prompttune config --schema > {SCHEMA_FILE}`:",
             f"# yaml-language-server: $schema={SCHEMA_FILE}", ""]
    _yaml_block(RunConfig, RunConfig(), 0, lines, method)
    return "\n".join(lines) + "\n"


def _comment(text: str) -> str:
    return f"  # {' '.join(text.split())}" if text else ""


def _yaml_block(model: type[BaseModel], value: BaseModel | None, depth: int, lines: list[str], method: str | None) -> None:
    pad = "  " * depth
    for name, field in model.model_fields.items():
        annotation = field.annotation
        current = getattr(value, name) if value is not None else _default(field)
        if annotation is MethodConfig:
            chosen = method or DEFAULT_METHOD
            lines.append(f"{pad}{name}:")
            lines.append(f"{pad}  name: {shown(chosen)}{_comment(MethodConfig.model_fields['name'].description or '')}")
            if method is not None:
                options = method_options(method)
                _yaml_block(options, options(), depth + 1, lines, None)
            else:
                lines.append(f"{pad}  # the method's own options go here: see `prompttune config --method {chosen}`")
            continue
        if _is_section(annotation) and isinstance(current, BaseModel):
            lines.append(f"{pad}{name}:{_comment(field.description or '')}")
            _yaml_block(annotation, current, depth + 1, lines, method)
            continue
        if isinstance(current, BaseModel):
            current = current.model_dump(mode="json")
        lines.append(f"{pad}{name}: {shown(current)}{_comment(field.description or '')}")


# ---- --schema: JSON Schema for editors --------------------------------------------------------------------------------
def json_schema() -> dict:
    """RunConfig's JSON Schema, with each method's options checked by its name (``if``/``then`` per method)."""
    schema = RunConfig.model_json_schema()
    defs = schema.setdefault("$defs", {})
    rules = []
    for name, options in METHOD_OPTIONS.items():
        own = options.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(own.pop("$defs", {}))
        props = {"name": {"const": name}, **own.get("properties", {})}
        then = {"properties": props, "additionalProperties": False}
        rules.append({"if": {"properties": {"name": {"const": name}}, "required": ["name"]}, "then": then})
        if name == DEFAULT_METHOD:
            rules.append({"if": {"not": {"required": ["name"]}}, "then": then})
    method = defs["MethodConfig"]
    method["properties"]["name"]["enum"] = list(METHOD_OPTIONS)
    method["allOf"] = rules
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "prompttune run config"}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
