"""What a service refuses, and why, in words a caller can act on: each error carries the
HTTP status the API answers it with (as polar's PolarError does), so routes need no
translation table; tasks catch the same errors and fail the job with the message."""

from __future__ import annotations


class ServiceError(Exception):
    """A refusal; the message names the field or the resource at fault."""

    status = 400

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers


class BadInput(ServiceError):
    """Something sent cannot be read (an image that does not decode)."""


class NotFound(ServiceError):
    """No such resource, or one in a project the caller does not see."""

    status = 404


class Conflict(ServiceError):
    """The resource is not in a state that allows this (not deployed, taken name)."""

    status = 409


class Invalid(ServiceError):
    """A value is out of what the service accepts."""

    status = 422


class TooMany(ServiceError):
    """Over a quota; `headers` says when to retry."""

    status = 429


class Unavailable(ServiceError):
    """A server the service relies on (TorchServe) failed or is unreachable."""

    status = 502
