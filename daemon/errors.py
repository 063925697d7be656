"""Errors shared across the daemon's modules."""

from __future__ import annotations


class ConfigError(Exception):
    """The config file is missing, unreadable or has a bad value; the message says what to do."""
