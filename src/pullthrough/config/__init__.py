"""The distribution registry's ``config.yml``, plus our extensions under ``mirror:``.

A config the distribution registry accepts for a proxy starts pullthrough unchanged.
``REGISTRY_<KEY_PATH>`` environment variables override file values as distribution does.
Every bad value raises ConfigError with one line naming the key; unknown keys are warnings.
"""

from pullthrough.config.load import load
from pullthrough.config.model import (
    DEFAULT_REMOTE,
    DEFAULT_TTL,
    DOCKER_HUB_NAME,
    AuthConfig,
    Config,
    HostedConfig,
    Limits,
    StoreLimit,
    UpstreamConfig,
)
from pullthrough.config.values import ConfigError, parse_addr, parse_duration, parse_size

__all__ = [
    "AuthConfig",
    "DEFAULT_REMOTE",
    "DEFAULT_TTL",
    "DOCKER_HUB_NAME",
    "Config",
    "ConfigError",
    "HostedConfig",
    "Limits",
    "StoreLimit",
    "UpstreamConfig",
    "load",
    "parse_addr",
    "parse_duration",
    "parse_size",
]
