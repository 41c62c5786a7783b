"""One error type for the whole server: an HTTP status, a one-line reason, optional extra JSON."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = " ".join(str(detail).split())  # always one line
        self.extra = extra
        self.headers: dict[str, str] = {}


def bad_request(detail: str) -> ApiError:
    return ApiError(400, detail)


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")


def forbidden(detail: str) -> ApiError:
    return ApiError(403, detail)


def conflict(detail: str, **extra: Any) -> ApiError:
    return ApiError(409, detail, **extra)
