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

Imports only the standard library (``adact --help`` reads it before torch).
"""

from __future__ import annotations

import os
import traceback

__all__ = ["AdactError", "UserCodeError", "UserError"]

_PACKAGE = os.path.dirname(os.path.realpath(__file__)) + os.sep


class AdactError(Exception):
    """Base class of every exception adact defines."""


class UserError(AdactError, ValueError):
    """A mistake in what the user gave (arguments, names, files); the message says how to fix it.

    A ``ValueError``, so ``except ValueError`` (and argument checks in the style of ``torch.nn``)
    keep working.
    """


class UserCodeError(UserError):
    """An exception raised by the user's own code that adact ran (a ``--model file.py:factory``).

    It is the user's error, not adact's: the command line prints :attr:`frames` (the traceback
    from the user's first frame on, without adact's and importlib's frames that led there), then
    the one line ``adact: error: ...``, exit status 2. Make one with :meth:`wrap`.
    """

    def __init__(self, message: str, frames: str = "") -> None:
        super().__init__(message)
        self.frames = frames

    def __reduce__(self) -> tuple[type[UserCodeError], tuple[str, str]]:  # survives a worker process
        return type(self), (str(self), self.frames)

    @classmethod
    def wrap(cls, message: str, error: BaseException, origin: str | None = None) -> UserCodeError:
        """``message``, with ``error``'s traceback from the user's first frame.

        That is the first frame under ``origin`` (the folder of the user's code) when one is,
        else the first outside adact and importlib (torch's module machinery may lead there too).
        """
        first = error.__traceback__
        if origin is not None:
            mine = os.path.realpath(origin) + os.sep
            tb = first
            while tb is not None and not os.path.realpath(tb.tb_frame.f_code.co_filename).startswith(mine):
                tb = tb.tb_next
            if tb is not None:
                return cls(message, "".join(traceback.format_exception(type(error), error, tb)))
        while first is not None and _leads_there(first.tb_frame.f_code.co_filename):
            first = first.tb_next
        return cls(message, "".join(traceback.format_exception(type(error), error, first)))


def _leads_there(filename: str) -> bool:
    """A frame of adact or of importlib, on the way to the user's code."""
    return filename.startswith("<frozen ") or os.path.realpath(filename).startswith(_PACKAGE)
