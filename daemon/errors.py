"""Errors shared across the daemon's modules. How their messages show config values is
``dvrlink.store.toml_text`` (shared with the viewer and the broker)."""

from __future__ import annotations


class ConfigError(Exception):
    """The config file is missing, unreadable or has a bad value; the message says what to do."""
