"""What the API refuses, each with the HTTP status it maps to."""

from __future__ import annotations


class ServeError(Exception):
    status_code = 400


class BadRequest(ServeError):
    status_code = 400


class Unauthenticated(ServeError):
    """No session (the review page): sign in first."""

    status_code = 401


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


class CallbackRefused(ServeError):
    """A callback URL the server must not reach (an internal address, no such host, not http(s))."""

    status_code = 422


class TooManyRequests(ServeError):
    """Past a limit on work in flight (uploads of a key, scans queued); ``retry_after_s`` goes in Retry-After."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
