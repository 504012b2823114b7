"""Errors that mean "what was given is wrong", not "the library is wrong".

Every error here derives from :class:`UserError` and from the built-in exception a caller would
expect (``ValueError``, ``KeyError``, ``FileNotFoundError``, ...), so code that catches the
built-in keeps working. The command line prints a :class:`UserError` as one line,
``internimage: error: <message>``, and exits with its :attr:`~UserError.exit_code`; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointFileError",
    "ConfigError",
    "ConfigKeyError",
    "DataError",
    "DataWarning",
    "DeviceError",
    "MissingDependencyError",
    "MissingFileError",
    "RunExistsError",
    "UsageError",
    "UserError",
    "WeightsUnavailableError",
]


class UserError(Exception):
    """A problem with the arguments, settings, data, files, devices or network a caller gave.

    The message names the thing and says what to do about it.
    """

    #: Exit status of the command line for this error: 2 for usage, 1 otherwise.
    exit_code: int = 1
    #: Whether every process of a distributed run meets this error in the same form. Only such
    #: errors are printed by rank 0 alone; the others are printed by the rank that hits them.
    same_on_every_process: bool = True

    def __str__(self) -> str:
        # KeyError (a base of some subclasses) would show the message in quotes.
        if len(self.args) == 1 and isinstance(self.args[0], str):
            return self.args[0]
        return super().__str__()


class UsageError(UserError, ValueError):
    """Command-line arguments that do not fit together."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A setting with a wrong type or value (from ``--set``, a flag or a config file)."""

    exit_code = 2


class ConfigKeyError(ConfigError, KeyError):
    """A setting that does not exist."""


class DataError(UserError, ValueError):
    """A dataset that is missing, empty, unreadable or does not fit the model."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that was named but does not exist."""


class CheckpointFileError(UserError, ValueError):
    """A checkpoint file that is missing, empty, truncated, corrupt or of the wrong kind."""


class DeviceError(UserError, RuntimeError):
    """A device that does not exist or is not available to this process."""

    # Which GPU a process gets depends on its rank, so one rank may fail where others do not.
    same_on_every_process = False


class WeightsUnavailableError(UserError, OSError):
    """Released weights that are not cached and cannot be downloaded (no network)."""


class RunExistsError(UserError, FileExistsError):
    """A run folder that already holds a run, where a new run was asked for."""


class MissingDependencyError(UserError, ImportError):
    """An optional package that a feature needs is not installed."""


class DataWarning(UserWarning):
    """Something in the data was skipped or repaired (an unreadable image, a degenerate box);
    printed as one ``internimage: warning: ...`` line by the command line."""
