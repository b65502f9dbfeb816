"""The Celery app of the distributed mode, configured from :class:`Settings`.

Delivery is at-least-once and made exactly-once in effect by the database:

* a chunk is acknowledged only after its rows are committed (``acks_late``);
* a pool process killed mid-chunk (SIGKILL, OOM) gives its chunk back
  (``reject_on_worker_lost``); a whole worker that vanishes with its host
  stops renewing its chunk's lease in the database, and a live worker's reaper
  enqueues the chunk again once the lease runs out (:mod:`workers.fleet.lease`),
  long before the visibility timeout hands the stale message out again;
* each process reserves one chunk at a time (``prefetch_multiplier = 1``);
* results are upserts on (scan_id, path_hash), and a chunk's attempts are counted
  in the database so that a chunk that always kills its worker ends as error
  rows instead of looping (see :mod:`workers.fleet.tasks`).

Messages are JSON: pickle is refused.  Nothing here loads a model or opens
a database: the app is cheap to create, in the producer as in the worker.
"""

from __future__ import annotations

import threading

from celery import Celery

from dfscan.core.constants import producer_queue
from dfscan.core.settings import Settings, SettingsError, from_env

__all__ = ["RETENTION_TASK", "SCORE_TASK", "SCHEDULED_SCAN_TASK", "create_app", "get_app", "set_app", "transport_options"]

SCORE_TASK = "dfscan.score_chunk"
SCHEDULED_SCAN_TASK = "dfscan.scheduled_scan"
RETENTION_TASK = "dfscan.prune"  # the nightly prune (workers.fleet.schedule.retention_schedule)
# Producer tasks of nightly schedules go to their own queue (dfscan.core.constants.producer_queue), so
# that a walk never holds a scoring process (a GPU) for the length of a scan.


class DfscanCelery(Celery):
    """A Celery app that carries the :class:`Settings` it was made from."""

    settings: Settings


def transport_options(settings: Settings) -> dict:
    """Redis transport options: visibility timeout, and sweeps frequent enough to honour it."""
    sweep = max(1, min(60, settings.visibility_timeout // 4))
    return {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": sweep,
        "unacked_restore_throttle": 1,
        # A publish to a broker that vanished without closing the connection
        # must fail (and be retried), not wait forever.
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
        "socket_keepalive": True,
        "health_check_interval": 10,
    }


def create_app(settings: Settings) -> DfscanCelery:
    """A new app for ``settings``; registers the dfscan tasks."""
    if not settings.broker_url:
        raise SettingsError("no broker given: pass --broker redis://HOST:PORT/DB or set DFSCAN_BROKER_URL")
    app = DfscanCelery("dfscan", set_as_current=False)
    app.settings = settings
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_default_queue=settings.queue,
        task_routes={SCHEDULED_SCAN_TASK: {"queue": producer_queue(settings.queue)},
                     RETENTION_TASK: {"queue": producer_queue(settings.queue)}},
        task_create_missing_queues=True,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
        timezone="UTC",
    )
    from dfscan.workers.fleet import tasks

    tasks.register(app)
    return app


_LOCK = threading.Lock()
_APP: DfscanCelery | None = None


def set_app(app: DfscanCelery) -> None:
    """Make ``app`` the process's app (``dfscan worker`` builds it from its options)."""
    global _APP
    with _LOCK:
        _APP = app


def get_app() -> DfscanCelery:
    """The process's app, created from the environment (``DFSCAN_*``) on first use."""
    global _APP
    with _LOCK:
        if _APP is None:
            _APP = create_app(from_env())
        return _APP
