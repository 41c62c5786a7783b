"""Errors a user can act on.

Anything raised as a :class:`SeganyError` is a problem with the user's input (a file, a prompt, a
setting), not a bug: the CLI prints its message on one line and exits with status 2.
"""

from __future__ import annotations


class SeganyError(Exception):
    """Base class for errors caused by bad input rather than by a bug."""


class CheckpointError(SeganyError):
    """A checkpoint file is missing, unreadable, unsafe, truncated or not a SAM model."""


class ImageError(SeganyError):
    """An image is missing, unreadable or of an unsupported kind."""


class PromptError(SeganyError, ValueError):
    """A prompt (point, box, mask) is malformed or outside the image (also a ``ValueError``, as the
    official package's checks raise for bad arguments)."""
