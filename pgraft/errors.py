"""The exceptions a user can cause. Each names its cause; none is raised for internal bugs."""


class PgraftError(Exception):
    """Base class of every error pgraft raises on purpose."""


class ConfigError(PgraftError, ValueError):
    """A config field is missing, of the wrong type, or outside its allowed range."""


class RewardError(PgraftError, ValueError):
    """A reward function returned something that breaks the reward signature."""


class CheckpointError(PgraftError, OSError):
    """A cached model or checkpoint is missing, incomplete or corrupt."""


class ShapeError(PgraftError, ValueError):
    """A tensor argument has the wrong shape, dtype or device."""


class BufferError(PgraftError, ValueError):
    """A trajectory-buffer operation was given bad input (unknown field, full buffer, ...)."""


class DistributedError(PgraftError):
    """A peer rank died or hung, or the ranks disagree about the run."""
