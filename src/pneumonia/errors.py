"""Errors a user can fix; entry points print them as one line instead of a traceback."""


class UserError(ValueError):
    """Bad input: data, configuration or checkpoint."""


class ConfigError(UserError):
    """A configuration value that cannot work; the message names the key."""


class CheckpointError(UserError):
    """A file that is not a checkpoint of this project."""
