"""A small JSON file of eigenmix's own (an index, a report, a head's metadata), read with one
clear line for each way it can be wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eigenmix.errors import InvalidInputError


def read_json_object(path: Path, missing: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``missing`` is the message when the file is not there."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInputError(missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: must hold a JSON object")
    return data
