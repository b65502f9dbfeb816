"""The Celery fleet: the app, thin tasks over the scoring loop, the producer, leases, schedules and metrics.

Celery, kombu and redis are imported here and nowhere else (an import-linter
contract).  Nothing is imported at package import: ``celery -A dfscan.workers``
loads the app through :mod:`dfscan.workers`' lazy ``celery`` name.
"""
