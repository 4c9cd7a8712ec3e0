"""The exceptions adact raises on purpose, and how the command line tells them from bugs.

* :class:`AdactError` is the root of every exception adact defines.
* :class:`UserError` (also a ``ValueError``) is a mistake the user can fix: a bad argument, an
  unknown name, a damaged or foreign file, a run folder of other settings. The command line
  prints it as one line, ``adact: error: ...``, with exit status 2, and so it does any
  ``OSError`` (a missing file, a full or read-only disk).
* Anything else that escapes is a bug: the command line keeps its traceback and says how to
  report it.

So a check that rejects what the user gave raises :class:`UserError` (or a subclass), never a
bare ``ValueError``, and no code turns other exception types into it to fit: a ``RuntimeError``
from deep inside torch stays a traceback unless the code that called torch knows it means
"your file is damaged" and says so.

Imports nothing (``adact --help`` reads it before torch).
"""

from __future__ import annotations

__all__ = ["AdactError", "UserError"]


class AdactError(Exception):
    """Base class of every exception adact defines."""


class UserError(AdactError, ValueError):
    """A mistake in what the user gave (arguments, names, files); the message says how to fix it.

    A ``ValueError``, so ``except ValueError`` (and argument checks in the style of ``torch.nn``)
    keep working.
    """
