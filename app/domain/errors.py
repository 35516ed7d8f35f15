"""Domain errors: what went wrong in words a user can act on. Each façade maps them to its wire format."""
from __future__ import annotations


class DomainError(Exception):
    """Base of every error a domain function raises on purpose."""

    code = "unknown"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    code = "invalid_argument"


class NotFound(DomainError):
    code = "not_found"


class AlreadyExists(DomainError):
    code = "already_exists"


class FailedPrecondition(DomainError):
    code = "failed_precondition"


class PermissionDenied(DomainError):
    code = "permission_denied"


class Unauthenticated(DomainError):
    code = "unauthenticated"


class ResourceExhausted(DomainError):
    """Out of something that comes back (ready instances, a rate, a quota). `retry_after`, when known,
    is the seconds after which a retry may succeed; the wires send it as a hint (Retry-After, gRPC
    trailing metadata)."""

    code = "resource_exhausted"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(ResourceExhausted):
    """The caller's organization is over its request rate (not a pool out of instances)."""


class Unavailable(DomainError):
    code = "unavailable"


class Aborted(DomainError):
    """A compare-and-set lost a race; the caller may retry."""

    code = "aborted"


class ProviderFailed(DomainError):
    """A provider call the request needed (e.g. reading an instance's console output) failed."""

    code = "provider_error"
