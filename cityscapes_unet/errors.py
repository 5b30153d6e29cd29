"""The project's errors: each message is one line that names the flag or file.

`main.py` prints such a message as `error: ...` and exits with code 1 (2 for
a bad flag), without a traceback.
"""

from __future__ import annotations


class ProjectError(Exception):
    """Base of the errors whose message is meant for the user as it is."""


class UsageError(ProjectError, ValueError):
    """A bad flag or input; the message is one line naming it."""


class DataError(UsageError):
    """A data folder or file that cannot be used."""


class InputError(UsageError):
    """One input file of `predict` or `export` cannot be used."""


class DistributeError(UsageError):
    """A distribution setting that cannot work on this machine."""


class TfdsSourceError(UsageError):
    """Cityscapes cannot be read through TensorFlow Datasets."""


class FolderInUse(ProjectError, RuntimeError):
    """Another process holds the run folder's lock."""


class TrainingError(ProjectError, RuntimeError):
    """Training cannot go on (a failed save, non-finite weights)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says what is on disk and how to go on."""
