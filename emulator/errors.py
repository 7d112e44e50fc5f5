"""The platform's ErrorBody and the exception that carries it out of a handler."""

from __future__ import annotations

from typing import Any

# Status → ErrorBody code, from the swagger-derived list in the reference (§3.3).
DEFAULT_CODES: dict[int, str] = {
    400: "bad.request",
    401: "bad.credentials",
    403: "missing.any.permissions",
    404: "not.found",
    405: "method.not.allowed",
    408: "client.timeout",
    409: "general.conflict",
    413: "request.entity.too.large",
    415: "unsupported.media.type",
    429: "too.many.requests.retry.after",
    500: "internal.server.error",
    502: "bad.gateway",
    503: "service.unavailable",
    504: "request.timeout",
}


def detail(
    field_name: str, error_code: str = "bad.request", entity_id: str | None = None
) -> dict[str, str]:
    """One ``Detail`` entry of an ErrorBody."""
    out = {"errorCode": error_code, "fieldName": field_name}
    if entity_id is not None:
        out["entityId"] = entity_id
    return out


class ApiError(Exception):
    """Raised by handlers; the server turns it into an ErrorBody response with ``contextId``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        message_params: dict[str, str] | None = None,
        message_with_params: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or DEFAULT_CODES.get(status, "internal.server.error")
        self.message = message
        self.details = details or []
        self.headers = headers or {}
        self.message_params = message_params
        self.message_with_params = message_with_params

    def body(self, context_id: str) -> dict[str, Any]:
        """The ErrorBody JSON for this error."""
        out: dict[str, Any] = {
            "message": self.message,
            "code": self.code,
            "status": self.status,
            "contextId": context_id,
            "details": self.details,
            "errors": [],
        }
        if self.message_params is not None:
            out["messageParams"] = self.message_params
        if self.message_with_params is not None:
            out["messageWithParams"] = self.message_with_params
        return out


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} was not found.", code="not.found")


def bad_request(message: str, details: list[dict[str, str]] | None = None) -> ApiError:
    return ApiError(400, message, code="bad.request", details=details)


def missing_permission(permission: str) -> ApiError:
    return ApiError(
        403,
        f"Unable to perform the requested action. You are missing the following permission(s): "
        f"[{permission}]",
        code="missing.any.permissions",
        message_params={"0": permission},
    )


def too_many_requests(retry_after: int) -> ApiError:
    return ApiError(
        429,
        f"Rate limit exceeded the maximum. Retry the request in [{retry_after}] seconds",
        code="too.many.requests.retry.after",
        headers={"Retry-After": str(retry_after)},
        message_params={"0": str(retry_after)},
        message_with_params="Rate limit exceeded the maximum. Retry the request in [{0}] seconds",
    )
