"""Unlabeled input rows in JSONL (what ``eigenmix route`` reads): one JSON object a line
with a text field (default ``"text"``) and, for sentence pairs, ``"text_pair"``; a group
field (e.g. ``"task"``) where the caller asks for one; other fields are ignored."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from eigenmix.errors import InvalidInputError

MAX_ROWS = 1_000_000


@dataclass(frozen=True)
class InputRow:
    """One row to run: its line number, its text, optional pair and group."""

    line: int
    text: str
    text_pair: str | None = None
    group: str | None = None


def read_inputs(
    path: Path, text_field: str = "text", pair_field: str = "text_pair", limit: int | None = None, group_field: str | None = None
) -> list[InputRow]:
    """Every non-blank line of ``path`` (the first ``limit`` rows, the rest unread; each row's
    ``group_field``, a string, where it has one); one :class:`InvalidInputError` line for the
    first bad one."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    rows = []
    with path.open(encoding="utf-8", errors="strict") as fh:
        try:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    raise InvalidInputError(f"{path}:{number}: not valid JSON") from None
                if not isinstance(obj, dict):
                    raise InvalidInputError(f"{path}:{number}: a row must be a JSON object")
                text, pair = obj.get(text_field), obj.get(pair_field)
                if text_field not in obj:
                    raise InvalidInputError(f"{path}:{number}: no field '{text_field}' (fields: {', '.join(list(obj)[:5]) or 'none'})")
                if not isinstance(text, str):
                    raise InvalidInputError(f"{path}:{number}: field '{text_field}' must be a string")
                if pair is not None and not isinstance(pair, str):
                    raise InvalidInputError(f"{path}:{number}: field '{pair_field}' must be a string")
                group = obj.get(group_field) if group_field is not None else None
                if group is not None and not isinstance(group, str):
                    raise InvalidInputError(f"{path}:{number}: field '{group_field}' must be a string")
                rows.append(InputRow(number, text, pair, group))
                if limit is not None and len(rows) >= limit:
                    break
                if len(rows) > MAX_ROWS:
                    raise InvalidInputError(f"{path}: more than {MAX_ROWS:,} rows; split the file")
        except UnicodeDecodeError:
            raise InvalidInputError(f"{path}: not UTF-8 text") from None
    if not rows:
        raise InvalidInputError(f"{path}: has no rows")
    return rows
