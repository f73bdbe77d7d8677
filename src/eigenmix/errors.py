"""The package's exceptions.

Every user mistake (a missing folder, a malformed adapter, an unsupported variant) raises a
subclass of :class:`EigenmixError` with a one-line message that names the file and the
problem. The CLI turns these into one line on stderr and exit code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EigenmixError(Exception):
    """Base class of every error eigenmix raises on purpose."""


class InvalidInputError(EigenmixError, ValueError):
    """The input (a path, a file, a tensor, an argument) is not what eigenmix can read."""


class UnsupportedAdapterError(InvalidInputError):
    """An adapter uses a PEFT variant whose maths eigenmix does not (yet) reproduce."""


class ShapeMismatchError(InvalidInputError):
    """Tensors disagree in shape with each other or with their config."""


class NonFiniteError(InvalidInputError):
    """A tensor holds NaN or Inf values."""


class ExecutorError(EigenmixError):
    """A distributed executor could not run the work: Ray is missing, a worker crashed or was
    killed, the cluster is unreachable."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string: the hint
    of every unknown-name message (merge methods, routers)."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
