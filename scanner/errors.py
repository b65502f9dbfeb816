"""Errors raised while walking storage (setup errors: the CLI reports them)."""


class ScannerError(Exception):
    """Base class for walker errors."""


class RootNotFound(ScannerError):
    """A root given to the scan does not exist or can't be read."""


class PathListError(ScannerError):
    """A path-list file can't be read."""


class OutsideRoot(ScannerError):
    """A scan that follows no symbolic link met one on a file's path (scanner.confine): the file is not read."""
