"""Render docs/configuration.md from the pydantic models of :mod:`deployments.config`.

Every field's name, type, default, constraints and description come from the models,
found by walking :class:`~deployments.config.AppConfig`'s field annotations (so a model
may move between modules without touching this file). The hand-written prose around
the tables (the intro, the example, per-section notes) is in :mod:`deployments.config.docs_prose`. Pure: imports no
Ray and no vLLM. ``glm-serve config-docs`` (``make config-docs``) writes the file and
``make check-config`` fails while the checked-in copy is stale.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from deployments.config import AppConfig
from deployments.config.docs_prose import FOOTER, HEADER, NOTES

ROOT = "args"
COMMAND = "make config-docs"
"""What to run when docs/configuration.md is stale."""


class ConfigDocsError(ValueError):
    """The models cannot be documented as they are (a field without a description, ...)."""


@dataclass(frozen=True)
class Section:
    """One model reachable from :class:`AppConfig`, at its place in the YAML."""

    path: str
    """Where it sits under a Serve application, e.g. ``args.engine.routing``."""
    model: type[BaseModel]
    description: str
    """The description of the field that holds it (empty for ``args`` itself)."""


# --- hand-written prose ------------------------------------------------------------------

# --- walking the models ------------------------------------------------------------------


def _branches(annotation: Any) -> tuple[Any, ...]:
    """The members of a union annotation, or the annotation alone."""
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _submodel(path: str, annotation: Any) -> type[BaseModel] | None:
    """The model a field holds directly (``X`` or ``X | None``); models nested deeper
    (``list[X]``) have no place in the layout yet, so they are an error, not a gap."""
    direct = [b for b in _branches(annotation) if _is_model(b)]
    if len(direct) > 1:
        raise ConfigDocsError(f"{path}: a union of several models cannot be documented as one section")
    if direct:
        return direct[0]

    def nested(a: Any) -> bool:
        return any(_is_model(x) or nested(x) for x in get_args(a))

    if nested(annotation):
        raise ConfigDocsError(f"{path}: a model inside a container is not supported by deployments/config/docs.py")
    return None


def sections(model: type[BaseModel] = AppConfig, path: str = ROOT, description: str = "") -> Iterator[Section]:
    """Every model reachable from ``model`` through its fields' annotations, depth first,
    each at its YAML path (``args``, ``args.model``, ``args.model.streaming``, ...)."""
    yield Section(path, model, description)
    for name, field in model.model_fields.items():
        sub = _submodel(f"{path}.{name}", field.annotation)
        if sub is not None:
            yield from sections(sub, f"{path}.{name}", field.description or "")


def leaf_paths(model: type[BaseModel] = AppConfig, path: str = ROOT) -> list[str]:
    """The YAML path of every field that is not itself a section."""
    return [
        f"{s.path}.{name}"
        for s in sections(model, path)
        for name, field in s.model.model_fields.items()
        if _submodel(f"{s.path}.{name}", field.annotation) is None
    ]


# --- rendering pieces --------------------------------------------------------------------


def anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: ``args.engine.routing`` -> ``argsenginerouting``."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def yaml_literal(value: Any) -> str:
    """``value`` as it would be written in the YAML (flow style, one line)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, BaseModel):
        return yaml_literal(value.model_dump(exclude_defaults=True))
    if isinstance(value, (list, tuple, set, frozenset)):
        return "[" + ", ".join(map(yaml_literal, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)}: {yaml_literal(v)}" for k, v in value.items()) + "}"
    raise ConfigDocsError(f"no YAML form for a default of type {type(value).__name__}")


def _key(key: Any) -> str:
    return key if isinstance(key, str) and re.fullmatch(r"[A-Za-z_][\w-]*", key) else yaml_literal(key)


def _number(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def _constraints(field: FieldInfo) -> tuple[str | None, str | None, list[str]]:
    """(lower bound, upper bound, other constraints) of a field, as text: ``("1 ≤", "≤ 64", [])``."""
    lower = upper = None
    other: list[str] = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            lower = f"{_number(item.ge)} ≤"
        elif isinstance(item, annotated_types.Gt):
            lower = f"{_number(item.gt)} <"
        elif isinstance(item, annotated_types.Le):
            upper = f"≤ {_number(item.le)}"
        elif isinstance(item, annotated_types.Lt):
            upper = f"< {_number(item.lt)}"
        elif isinstance(item, annotated_types.MultipleOf):
            other.append(f"a multiple of {_number(item.multiple_of)}")
        elif isinstance(item, annotated_types.MinLen):
            other.append(f"length ≥ {item.min_length}")
        elif isinstance(item, annotated_types.MaxLen):
            other.append(f"length ≤ {item.max_length}")
        elif getattr(item, "pattern", None) is not None:
            other.append(f"matching {item.pattern}")
        else:  # never drop a constraint silently
            other.append(str(item))
    return lower, upper, other


_FLIP = {"≤": "≥", "<": ">"}


def _bounded(name: str, lower: str | None, upper: str | None) -> str:
    """``1 ≤ int ≤ 64``, ``int ≥ 1`` (from a lower bound ``1 ≤``), ``float < 2``."""
    if lower and upper:
        return f"{lower} {name} {upper}"
    if lower:
        value, op = lower.rsplit(" ", 1)
        return f"{name} {_FLIP[op]} {value}"
    return f"{name} {upper}" if upper else name


_NAMES = {int: "int", float: "float", str: "string", bool: "bool", type(None): "null", Any: "any"}


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(annotation))
    if origin is Literal:
        return " | ".join(yaml_literal(v) for v in get_args(annotation))
    if origin in (list, tuple, set, frozenset):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        args = get_args(annotation)
        return "mapping" if not args or args[1] is Any else f"mapping of {_type_name(args[1])}"
    if _is_model(annotation):
        return "mapping"
    if annotation in _NAMES:
        return _NAMES[annotation]
    return getattr(annotation, "__name__", str(annotation))


def type_text(field: FieldInfo) -> str:
    """A field's type with its constraints, e.g. ``int ≥ 1 | null`` or ``"pow2" | "prefix"``.
    Bounds attach to the numeric branches of a union, other constraints to the first other
    branch that is not ``null`` or a literal; a constraint no branch takes follows the type."""
    lower, upper, other = _constraints(field)
    bounds_used = False
    parts = []
    for branch in _branches(field.annotation):
        name = _type_name(branch)
        if branch in (int, float) and (lower or upper):
            name, bounds_used = _bounded(name, lower, upper), True
        elif other and branch not in (int, float, type(None)) and get_origin(branch) is not Literal:
            name, other = f"{name} ({', '.join(other)})", []
        parts.append(name)
    text = " | ".join(dict.fromkeys(parts))
    if (lower or upper) and not bounds_used:
        other.insert(0, _bounded("value", lower, upper))
    return f"{text} ({', '.join(other)})" if other else text


def default_text(field: FieldInfo) -> str:
    """A field's default as YAML (a ``default_factory`` is called), or ``required``."""
    if field.is_required():
        return "*required*"
    if field.default_factory is not None:
        return f"`{yaml_literal(field.get_default(call_default_factory=True, validated_data={}))}`"
    if field.default is PydanticUndefined:
        return "*required*"
    return f"`{yaml_literal(field.default)}`"


_CODE = re.compile(r"(`[^`]*`)")
_DOC = re.compile(r"\bdocs/([\w.-]+\.md)\b")


def prose(text: str) -> str:
    """A description as one Markdown table cell: whitespace joined, ``|`` escaped, and
    outside code spans ``<``/``*`` escaped and ``docs/<page>.md`` linked (this file is in docs/)."""
    out = []
    for i, part in enumerate(_CODE.split(" ".join(text.split()))):
        if i % 2 == 0:  # not a code span
            part = part.replace("<", "&lt;").replace("*", r"\*")
            part = _DOC.sub(r"[docs/\1](\1)", part)
        out.append(part.replace("|", r"\|"))
    return "".join(out)


# --- the document ------------------------------------------------------------------------


def _heading(path: str) -> str:
    return f"`{path}`"


def _owner(model: type[BaseModel], name: str) -> str:
    """``module.Class.field`` of the class that declares field ``name`` (maybe a base of ``model``)."""
    owner = next((c for c in model.__mro__ if name in vars(c).get("__annotations__", {})), model)
    return f"{owner.__module__}.{owner.__qualname__}.{name}"


def _missing_descriptions(all_sections: list[Section]) -> list[str]:
    return [
        f"{s.path}.{name} ({_owner(s.model, name)})"
        for s in all_sections
        for name, field in s.model.model_fields.items()
        if not (field.description or "").strip()
    ]


def render(model: type[BaseModel] = AppConfig, notes: Mapping[str, str] | None = None) -> str:
    """docs/configuration.md for ``model``: the header, a table per section (field, type,
    default, description), each section's note (``notes``, by default :data:`NOTES`), the
    footer. Raises :class:`ConfigDocsError` naming every field without a description, or a
    note whose section no longer exists."""
    notes = NOTES if notes is None else notes
    all_sections = list(sections(model))
    missing = _missing_descriptions(all_sections)
    if missing:
        raise ConfigDocsError(
            "config fields without a description; give each Field(description=...):\n  " + "\n  ".join(missing)
        )
    paths = {s.path for s in all_sections}
    stale = sorted(set(notes) - paths)
    if stale:
        raise ConfigDocsError(f"deployments/config/docs.py has notes for sections that no longer exist: {stale}")

    lines = [
        f"<!-- Generated from deployments/config/ by `{COMMAND}`: edit the Field descriptions there, "
        "or the prose in deployments/config/docs.py, not this file. -->",
        "",
        HEADER.rstrip(),
        "",
        "Sections: " + ", ".join(f"[{_heading(s.path)}](#{anchor(_heading(s.path))})" for s in all_sections) + ".",
    ]
    for s in all_sections:
        lines += ["", f"## {_heading(s.path)}", ""]
        if s.description:
            lines += [prose(s.description), ""]
        lines += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, field in s.model.model_fields.items():
            sub_path = f"{s.path}.{name}"
            if _submodel(sub_path, field.annotation) is not None:
                cell = f"[`{name}`](#{anchor(_heading(sub_path))})"
            else:
                cell = f"`{name}`"
            row = [cell, f"`{type_text(field)}`".replace("|", r"\|"), default_text(field), prose(field.description)]
            lines.append("| " + " | ".join(row) + " |")
        if s.path in notes:
            lines += ["", notes[s.path].rstrip()]
    lines += ["", FOOTER.rstrip(), ""]
    return "\n".join(lines)
