"""Exceptions that carry a one-line, user-facing message.

The CLI turns any :class:`MrisrError` into ``mrisr: error: <message>`` on stderr and exit code 2,
so every message must name the offending file or key and say what is wrong with it.
"""


class MrisrError(Exception):
    """Base class for expected failures caused by the user's input or configuration."""


class InputError(MrisrError, ValueError):
    """A file or argument cannot be used (missing, unreadable, wrong shape, NaN, ...)."""


class ConfigError(MrisrError, ValueError):
    """A configuration file or mapping has an unknown key or an invalid value."""


class MrisrWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as
    ``mrisr: warning: <file>: <what>``)."""
