"""Reaching the broker from outside the fleet: whether it answers, and which errors mean it doesn't.

The commands ask here rather than importing kombu or redis themselves: Celery, kombu and
redis are imported in :mod:`dfscan.workers.fleet` only (an import-linter contract).
"""

from __future__ import annotations

from dfscan.workers.fleet.errors import BrokerUnreachable

__all__ = ["BROKER_CHECK_TIMEOUT_S", "check_broker", "connection_errors"]

BROKER_CHECK_TIMEOUT_S = 5


def check_broker(url: str, timeout: float = BROKER_CHECK_TIMEOUT_S) -> None:
    """Connect to the broker at ``url`` once, within ``timeout`` s; :class:`BrokerUnreachable` if that fails."""
    from kombu import Connection

    connection = Connection(url, connect_timeout=timeout)
    try:
        connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - every transport error means the same to the user
        raise BrokerUnreachable(url, exc) from exc
    finally:
        connection.release()


def connection_errors() -> tuple[type[BaseException], ...]:
    """The broker's connection errors (kombu's and redis-py's), where those packages are installed."""
    try:
        from kombu.exceptions import OperationalError
        from redis.exceptions import ConnectionError, TimeoutError
    except ImportError:
        return ()
    return (OperationalError, ConnectionError, TimeoutError)
