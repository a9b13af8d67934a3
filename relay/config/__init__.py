"""Configuration: strict YAML loading, validation into frozen models, file:line:col errors."""

from relay.config.errors import ConfigError, ConfigInvalid
from relay.config.load import default_config_path, load_config, load_users

__all__ = ["ConfigError", "ConfigInvalid", "default_config_path", "load_config", "load_users"]
