"""The one error type of the command line."""

from __future__ import annotations


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""
