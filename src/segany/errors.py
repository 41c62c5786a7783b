"""Errors a user can act on.

Anything raised as a :class:`SeganyError` is a problem with the user's input (a file, a prompt, a
setting), not a bug: the CLI prints its message on one line and exits with status 2. The errors about
bad values also derive from :class:`ValueError`, so code written for the official package that catches
``ValueError`` still catches them.
"""

from __future__ import annotations


class SeganyError(Exception):
    """Base class for errors caused by bad input rather than by a bug."""


class CheckpointError(SeganyError, ValueError):
    """A checkpoint file is missing, unreadable, unsafe, truncated or not a SAM model."""


class ImageError(SeganyError, ValueError):
    """An image is missing, unreadable, too large or of an unsupported kind.

    Also a :class:`ValueError`, as the official API raises for a bad image array."""


class PromptError(SeganyError, ValueError):
    """A prompt (point, box, mask) is malformed or outside the image (also a ``ValueError``, as the
    official package's checks raise for bad arguments)."""


class OutputError(SeganyError, OSError):
    """An output path cannot be written: its folder is missing or read-only, it is a folder where a
    file is meant (or the reverse), it is one of the inputs, or the disk is full."""


class TextPromptError(SeganyError, ValueError):
    """A text prompt cannot be answered: the text is empty or too long for CLIP, the model has no text
    prompt path, or CLIP (its weights, or the ``open_clip`` package) is not at hand."""
