"""Errors that the command line reports on one line with exit code 2."""


class UsageError(Exception):
    """A bad argument or input found after parsing (unknown model, negative epsilon, ...)."""
