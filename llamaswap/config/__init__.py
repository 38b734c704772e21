# -*- test-case-name: tests.test_config -*-
"""
The llamaswap configuration file: loading, validation and the frozen model
of it (SPEC.md section 2).

Pure: nothing here imports the reactor or does I/O, except L{loadConfig}
reading the file it is given.
"""

from llamaswap.config.errors import ConfigError
from llamaswap.config.loader import loadConfig, loadConfigText
from llamaswap.config.model import (
    DEFAULT_GROUP,
    Config,
    ExpandedSet,
    FiltersConfig,
    GroupConfig,
    GroupsConfig,
    HooksConfig,
    MatrixConfig,
    ModelConfig,
    PeerConfig,
    PerformanceConfig,
    TimeoutsConfig,
)

__all__ = [
    "ConfigError",
    "loadConfig",
    "loadConfigText",
    "Config",
    "ModelConfig",
    "GroupConfig",
    "GroupsConfig",
    "MatrixConfig",
    "ExpandedSet",
    "PeerConfig",
    "FiltersConfig",
    "TimeoutsConfig",
    "PerformanceConfig",
    "HooksConfig",
    "DEFAULT_GROUP",
]
