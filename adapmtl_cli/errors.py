"""The one error hierarchy: every expected failure is an ``AdapmtlError``.

The CLI prints ``Error: <message>`` and exits with code 2 for these; anything else is a bug and keeps its
traceback. Messages are one line: what is wrong, the offending value, what to do.
"""

from __future__ import annotations


class AdapmtlError(Exception):
    """Base class of every error the user can fix."""


class ConfigError(AdapmtlError):
    """An option or config value is invalid."""


class CheckpointError(AdapmtlError):
    """A checkpoint or model factory cannot be loaded or does not fit the model."""


class DiscoveryError(AdapmtlError):
    """Model outputs cannot be matched to tasks, or components cannot be found."""


class DataError(AdapmtlError):
    """A dataset folder is missing, malformed or holds invalid values."""


class TrainingError(AdapmtlError):
    """Fine-tuning cannot go on (for example the loss stopped being finite)."""


class ExportError(AdapmtlError):
    """An export artefact cannot be written or fails its verification."""
