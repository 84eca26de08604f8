"""One error tree: third-party exceptions are translated into these at the boundary."""

from __future__ import annotations


class DrainctlError(Exception):
    """Base of every error drainctl reports to a user. The message says what to do."""


class ConfigError(DrainctlError):
    """The configuration is invalid; nothing was started or changed."""


class BrokerError(DrainctlError):
    """RabbitMQ refused or lost something."""


class BrokerUnavailableError(BrokerError):
    """No connection to RabbitMQ right now (drainctl keeps retrying)."""


class TopologyError(BrokerError):
    """A queue or exchange exists with other settings than drainctl needs."""


class ControlError(DrainctlError):
    """A remote-control command could not be sent."""


class ApiError(DrainctlError):
    """The controller's HTTP API answered with an error."""


class RuntimeFailure(DrainctlError):
    """The worker runtime (local processes or the Docker engine) could not do what was asked."""
