"""Errors raised by inference runtimes."""


class RuntimeErrorBase(Exception):
    """Base class for runtime errors."""


class UnknownRuntime(RuntimeErrorBase):
    """No runtime of that name is registered."""


class RuntimeUnavailable(RuntimeErrorBase):
    """The runtime exists but can't run on this machine (package or GPU missing)."""


class ModelRejected(RuntimeErrorBase):
    """The model loaded but failed the start-up probe; the scan must not start."""


class InferenceFailed(RuntimeErrorBase):
    """A batch failed inside the runtime."""
