"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every refusal of the server is an :class:`APIError`; the app's handlers turn it (and FastAPI's
own errors, and the package's :class:`~multimodal.errors.InputError`) into that body with the
right status, so the official ``openai`` client raises its usual exceptions
(``BadRequestError``, ``AuthenticationError``, ``RateLimitError``, ...).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from multimodal.errors import InputError, MultimodalError
from multimodal.safety import PromptBlockedError


class APIError(Exception):
    """An error answered to the client.

    Args:
        status: HTTP status (4xx for what the client can fix).
        message: What was wrong and what is accepted.
        type: OpenAI's error type (``invalid_request_error``, ``authentication_error``, ...).
        param: The request field at fault, if one is.
        code: A machine-readable code (``content_policy_violation``, ``model_not_found``, ...).
        headers: Extra response headers (``Retry-After``).
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_exception(exc: Exception) -> APIError:
    """The :class:`APIError` of an exception a pipeline raised: a blocked prompt is OpenAI's
    ``content_policy_violation``, any other user mistake a 400, the rest a 500."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PromptBlockedError):
        return APIError(400, str(exc), code="content_policy_violation", param="prompt")
    if isinstance(exc, (InputError, MultimodalError)):
        return APIError(400, str(exc))
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
