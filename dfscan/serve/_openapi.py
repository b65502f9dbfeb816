"""What ``/openapi.json`` says beyond the routes' signatures: every error each operation answers, and
the multipart body of ``/v1/score``, so that a client generated from the document handles them.

Every refusal has the same body, :class:`ErrorBody`; :func:`errors` gives a route's ``responses``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["CALLBACK_URL_PATTERN", "CSV_PAGE", "ERROR_DESCRIPTIONS", "ROOT_PATTERN", "SCAN_ID_MAX", "ErrorBody", "errors", "score_body"]

# A root is an absolute path without NUL bytes; the allowed prefixes and existence are checked on the server.
ROOT_PATTERN = r"^/[^\x00]*$"
# An http(s) URL with a host name or address: what a URL parser takes. Whether the host resolves, and to an
# address the server may reach, is checked on the server (422).
CALLBACK_URL_PATTERN = (r"^[hH][tT][tT][pP][sS]?://([A-Za-z0-9._~%!$&'()*+,;=-]+(:[A-Za-z0-9._~%!$&'()*+,;=-]*)?@)?"
                        r"([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
                        r"([/?#][^\s\\\x00-\x1f\x7f]*)?$")
SCAN_ID_MAX = 2**31 - 1  # scans.id is a 32-bit integer

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Bad request: malformed JSON or multipart body, a root that does not exist, a bad cursor.",
    401: "Missing, invalid or revoked API key (`Authorization: Bearer <key>`).",
    403: "Not allowed: a root outside the server's allowed prefixes, or an endpoint that needs an admin key.",
    404: "No such scan, or one this key may not see (another key's scan).",
    408: "The request body did not arrive within the request timeout.",
    413: "The request body is larger than the server's upload limit.",
    422: "Well-formed JSON with fields that break the schema, or a query or path parameter out of range.",
    429: "Past a limit on work in flight (uploads of a key, scans queued); Retry-After says when to try again.",
    503: "Not ready: the model is not loaded or the database does not answer.",
}


class ErrorBody(BaseModel):
    """The body of every refusal: a sentence, or for a 422 the list of fields at fault."""

    detail: str | list[dict[str, Any]] = Field(description="What was wrong, for people; 422: one entry per field.")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route that answers ``codes`` with :class:`ErrorBody`."""
    return {code: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


def score_body(max_files: int) -> dict[str, Any]:
    """``openapi_extra`` of ``/v1/score``: its request body, read by the route itself (checked before parsing)."""
    files = {"type": "array", "minItems": 1, "maxItems": max_files,
             "items": {"type": "string", "format": "binary"},
             "description": "One part per image, each with a filename; the body's size is limited (413)."}
    schema = {"type": "object", "required": ["files"], "properties": {"files": files}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


# ``/v1/scans/{id}/results?format=csv`` answers 200 as CSV (the JSON page is the route's default).
CSV_PAGE: dict[int | str, dict[str, Any]] = {
    200: {"description": "A page of result rows (JSON), or with format=csv the rows as CSV (its next cursor in "
                         "the X-Next-Cursor header).",
          "content": {"text/csv": {"schema": {"type": "string"}}}}}
