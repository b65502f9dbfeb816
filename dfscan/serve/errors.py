"""What the API refuses, each with the HTTP status it maps to."""

from __future__ import annotations


class ServeError(Exception):
    status_code = 400


class BadRequest(ServeError):
    status_code = 400


class Forbidden(ServeError):
    status_code = 403


class NotFound(ServeError):
    status_code = 404


class Conflict(ServeError):
    status_code = 409


class TooLarge(ServeError):
    status_code = 413


class RequestTimeout(ServeError):
    status_code = 408
