"""The fleet's named errors: what goes wrong between the commands and the broker."""

from __future__ import annotations

from dfscan.core.errors import first_line
from dfscan.core.redact import mask_url

__all__ = ["BrokerUnreachable", "FleetError"]


class FleetError(Exception):
    """Base of the fleet's errors."""


class BrokerUnreachable(FleetError):
    """The broker at ``url`` can't be reached; ``reason`` is the transport's own error."""

    def __init__(self, url: str, reason: BaseException) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach the broker at {mask_url(url)}: {first_line(reason, limit=None)}")
