"""The one error type the viewer shows to a person: a message that says what to do, and an exit code."""

from __future__ import annotations

from dvrlink.store.toml_text import toml_value

__all__ = ["EXIT_CONFIG", "EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE", "ViewerError", "toml_value"]
"""``toml_value`` spells values in messages as a file does (``true``, ``"25"``), shared with dvrlinkd."""

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78
"""EX_CONFIG (sysexits.h): a file in the viewer's home is unusable, as all three programs exit."""


class ViewerError(Exception):
    """A failure the ``dvrlink`` command reports on stderr in one or two lines, then exits.

    ``message`` names the resource, what was seen and the next step; ``exit_code`` is
    ``EXIT_RUNTIME`` (1) for failures at run time, ``EXIT_USAGE`` (2) for bad arguments and
    ``EXIT_CONFIG`` (78) for a file in the viewer's home that cannot be used.
    """

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
