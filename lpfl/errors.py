"""The exceptions lpfl raises on purpose, in one place.

Every error a user can cause (a bad config value, a malformed data file, a model that cannot be
found) is one of these, with a message that says what to change. Anything else is a bug.
"""

from __future__ import annotations


class LpflError(Exception):
    """Base class: catch this to report a user-facing problem without a traceback."""


class ConfigError(LpflError):
    """A run config value is missing, of the wrong type, or contradicts another one."""


class DataError(LpflError):
    """A data file cannot be used; the message names the file, the line and the problem."""


class ModelError(LpflError):
    """A base model or tokenizer cannot be loaded or does not fit the prompt settings."""


class ArtefactError(LpflError):
    """An exported artefact (manifest + programs) is missing, damaged, or does not fit this client;
    the message names the field that differs and how to get a matching artefact."""
