"""The one error type the viewer shows to a person: a message that says what to do, and an exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2


class ViewerError(Exception):
    """A failure the ``dvrlink`` command reports on stderr in one or two lines, then exits.

    ``message`` names the resource, what was seen and the next step; ``exit_code`` is
    ``EXIT_RUNTIME`` (1) for failures at run time and ``EXIT_USAGE`` (2) for bad arguments.
    """

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
