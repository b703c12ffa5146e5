"""Errors a user can fix; entry points print them as one line instead of a traceback."""


class UserError(ValueError):
    """Bad input: data, configuration or checkpoint."""


class ConfigError(UserError):
    """A configuration value that cannot work; the message names the key."""


class CheckpointError(UserError):
    """A file that is not a checkpoint of this project."""


def instantiate(node, **kwargs):
    """`hydra.utils.instantiate`, but our one-line errors come out unwrapped instead of
    inside Hydra's multi-line InstantiationException."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise
