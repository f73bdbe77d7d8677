"""YAML config files read into frozen pydantic models, with every problem on one line.

All of a config's mistakes are reported at once, each with the key it concerns: unknown
keys with the nearest known one (``modlues: unknown key (did you mean 'modules'?)``), YAML
syntax errors with their line and column, a binary or unreadable file by name. Relative
paths are resolved against the config file's folder.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from eigenmix.errors import InvalidInputError

M = TypeVar("M", bound=BaseModel)
Translate = Callable[[dict[str, Any], Path], dict[str, Any]]  # another tool's config (and its folder) → this one's
MAX_BYTES = 1 << 20  # a config is a few lines; a larger file is a mistake (or a device that never ends)


def resolve_paths(raw: dict[str, Any], root: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """Make relative paths relative to the config file's folder: every ``modules[i].path``
    and ``modules[i].data``,
    every ``calibration.modules.<name>.file`` and the top-level ``keys``."""
    out = dict(raw)
    calibration = out.get("calibration")
    if isinstance(calibration, dict) and isinstance(calibration.get("modules"), dict):
        out["calibration"] = {
            **calibration,
            "modules": {
                name: {**m, "file": str(root / Path(m["file"]).expanduser())}
                if isinstance(m, dict) and isinstance(m.get("file"), str)
                else m
                for name, m in calibration["modules"].items()
            },
        }
    if isinstance(out.get("modules"), list):
        out["modules"] = [
            {**m, **{k: str(root / Path(m[k]).expanduser()) for k in ("path", "data") if isinstance(m.get(k), str)}}
            if isinstance(m, dict)
            else m
            for m in out["modules"]
        ]
    for key in keys:
        if isinstance(out.get(key), str):
            out[key] = str(root / Path(out[key]).expanduser())
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error (PyYAML keeps
    the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the last key of ``loc`` (for did-you-mean)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return None
        current = _inner_model(fields[part].annotation)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside ``X``, ``X | None``, ``list[X]`` or ``tuple[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple):
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


def describe(err: ValidationError, model: type[BaseModel]) -> list[str]:
    """One short phrase per validation error, unknown keys first."""
    problems = []
    for e in sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden"):
        where = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            holder = _model_at(model, tuple(e["loc"]))
            close = difflib.get_close_matches(str(e["loc"][-1]), list(holder.model_fields) if holder else [], n=1, cutoff=0.6)
            problems.append(f"{where}: unknown key" + (f" (did you mean '{close[0]}'?)" if close else ""))
        elif e["type"] == "missing":
            problems.append(f"{where}: required key missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
    return problems


def read_yaml_config(path: Path | str, model: type[M], path_keys: tuple[str, ...] = (), translate: Translate | None = None) -> M:
    """Read a YAML mapping, ``translate`` it (another tool's config into this one's, given the
    config's folder), resolve
    its relative paths, validate it as ``model``; every problem goes into one
    :class:`InvalidInputError` line naming the file."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such config file")
    if path.is_dir():
        raise InvalidInputError(f"{path}: is a folder; give the config file (YAML)")
    if not path.is_file():
        raise InvalidInputError(f"{path}: not a regular file; give the config file (YAML)")
    if path.stat().st_size > MAX_BYTES:
        raise InvalidInputError(f"{path}: {path.stat().st_size:,} bytes is too large for a config (at most {MAX_BYTES:,})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: not a text file; a config is YAML") from None
    except OSError as err:
        raise InvalidInputError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise InvalidInputError(f"{where}: not valid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise InvalidInputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{path}: must be a YAML mapping of keys (it is {'empty' if raw is None else type(raw).__name__})")
    try:
        if translate is not None:
            raw = translate(raw, path.parent)
        return model.model_validate(
            resolve_paths(raw, path.parent.absolute(), path_keys)
        )  # absolute: reports name inputs wherever they are read
    except ValidationError as err:
        problems = describe(err, model)
        lead = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise InvalidInputError(f"{path}: {lead}{'; '.join(problems)}") from None
    except InvalidInputError as err:
        raise InvalidInputError(f"{path}: {err}") from None
