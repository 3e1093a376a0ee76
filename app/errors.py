"""One error tree for the whole server, rendered once into the API's envelope.

Services raise `ChatError` subclasses; `register_error_handlers` maps them (and
Sanic's own 404/405/413/400) to `{"error": {"code", "message", "details"}}`.
The WebSocket layer renders the same errors as `{"type": "error", ...}` frames.
"""

from __future__ import annotations

import logging
from typing import Any

from sanic import Sanic, Request
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, json

from app.body_limits import allow_drain
from app import counters

log = logging.getLogger("chat.errors")


class ChatError(Exception):
    """Base of every error the API reports. Subclasses set status and code."""

    status = 400
    code = "bad_request"
    message = "Bad request."
    headers: dict[str, str] = {}

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details or {}
        if headers:
            self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(ChatError):
    status, code, message = 400, "bad_request", "The request is malformed."


class MalformedJSON(ChatError):
    status, code, message = 400, "malformed_json", "The body must be a JSON object."


class UnknownFrameType(BadRequest):
    code, message = "unknown_type", "Unknown frame type."


class Unauthorized(ChatError):
    status, code, message = 401, "unauthorized", "Authentication is required."


class InvalidToken(Unauthorized):
    code, message = "invalid_token", "The token is missing, invalid or expired."


class TokenExpired(InvalidToken):
    code, message = "token_expired", "The token has expired."


class InvalidCredentials(Unauthorized):
    code, message = "invalid_credentials", "Wrong username or password."


class RefreshTokenReused(Unauthorized):
    code, message = "refresh_token_reused", "This refresh token was already used; the session has been revoked."


class Forbidden(ChatError):
    status, code, message = 403, "forbidden", "You are not allowed to do this."


class NotMember(Forbidden):
    code, message = "not_member", "You are not a member of this room."


class Banned(Forbidden):
    code, message = "banned", "You are banned from this room."


class NotFound(ChatError):
    status, code, message = 404, "not_found", "Not found."


class RoomNotFound(NotFound):
    code, message = "room_not_found", "Room not found."


class UserNotFound(NotFound):
    code, message = "user_not_found", "User not found."


class MessageNotFound(NotFound):
    code, message = "message_not_found", "Message not found."


class FileNotFound(NotFound):
    code, message = "file_not_found", "File not found."


class NotMemberOfRoom(NotFound):
    """Leaving a room one is not in: 404 per the contract."""

    code, message = "not_member", "You are not a member of this room."


class MethodNotAllowed(ChatError):
    status, code, message = 405, "method_not_allowed", "Method not allowed."


class Conflict(ChatError):
    status, code, message = 409, "conflict", "Conflict."


class UsernameTaken(Conflict):
    code, message = "username_taken", "This username is already taken."


class FileNotReady(Conflict):
    code, message = "file_not_ready", "The file is still being processed."


class MessageDeleted(Conflict):
    code, message = "message_deleted", "This message was deleted."


class ReactionLimit(Conflict):
    code, message = "reaction_limit", "This message has as many different reactions as it may."


class Gone(ChatError):
    status, code, message = 410, "gone", "Gone."


class FileExpired(Gone):
    code, message = "file_expired", "The file has expired."


class PayloadTooLarge(ChatError):
    status, code, message = 413, "payload_too_large", "The request body is too large."


class UnsupportedMediaType(ChatError):
    status, code, message = 415, "unsupported_media_type", "This type is not allowed."


class ValidationFailed(ChatError):
    status, code, message = 422, "validation_failed", "Some fields are invalid."

    def __init__(self, fields: dict[str, str], message: str | None = None) -> None:
        super().__init__(message, details={"fields": fields})


class RateLimited(ChatError):
    status, code, message = 429, "rate_limited", "Too many requests; slow down."

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        retry_after = max(1, int(retry_after))
        super().__init__(message, details={"retry_after": retry_after},
                         headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(ChatError):
    status, code, message = 503, "service_unavailable", "A backing service is unavailable."


# Sanic's own exceptions (routing, body size, bad framing) by status.
_SANIC_CODES = {
    400: BadRequest, 404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


# Redis refusing writes for a reason an operator fixes (memory, a replica, a restart):
# redis-py maps these prefixes to classes, but a Lua script's failure may come as a plain
# ResponseError carrying the same text.
_REDIS_UNAVAILABLE_TEXT = ("OOM ", "READONLY ", "LOADING ", "MASTERDOWN ", "TRYAGAIN ", "CLUSTERDOWN ")


def backing_service_error(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 for a Redis or PostgreSQL failure that is not the client's doing, else None."""
    from redis import exceptions as rx
    if isinstance(exc, (rx.ConnectionError, rx.TimeoutError, rx.ReadOnlyError, rx.OutOfMemoryError,
                        rx.MasterDownError, rx.TryAgainError, rx.ClusterDownError)):
        return ServiceUnavailable("Redis is unavailable.", details={"service": "redis"})
    # Redis Cluster (REDIS_CLUSTER): a slot no master serves, redirects that never settle ("TTL
    # exhausted"), or no node reachable at all. (A cross-slot command is our bug: not here.)
    if isinstance(exc, (rx.SlotNotCoveredError, rx.ClusterError)) or (
            type(exc) is rx.RedisClusterException and "cannot be connected" in str(exc)):
        return ServiceUnavailable("Redis is unavailable.", details={"service": "redis"})
    if isinstance(exc, rx.ResponseError):
        text = str(exc)
        if any(text.startswith(p) or f" {p}" in text for p in _REDIS_UNAVAILABLE_TEXT):
            return ServiceUnavailable("Redis is unavailable.", details={"service": "redis"})
        return None
    try:
        import asyncpg
        from tortoise.exceptions import DBConnectionError
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, (DBConnectionError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                        asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.OperatorInterventionError,
                        asyncpg.exceptions.TooManyConnectionsError)):
        return ServiceUnavailable("PostgreSQL is unavailable.", details={"service": "postgres"})
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc and isinstance(exc, Exception) and not isinstance(exc, ChatError):
        # Tortoise wraps driver errors (OperationalError from asyncpg's): judge the driver's.
        from tortoise.exceptions import BaseORMException
        if isinstance(exc, BaseORMException):
            return backing_service_error(cause)
    if isinstance(exc, (ConnectionError, TimeoutError)) or (
            isinstance(exc, OSError) and "connect" in str(exc).lower()):
        # Refused/reset sockets and connect timeouts: the pools' own errors when a server is gone.
        return ServiceUnavailable("A backing service is unavailable.")
    return None


def to_chat_error(exc: BaseException) -> ChatError:
    """Translate any exception into the ChatError the client will see."""
    if isinstance(exc, ChatError):
        return exc
    unavailable = backing_service_error(exc)
    if unavailable is not None:
        counters.count_backend_error(unavailable.details.get("service"))  # chat_backend_errors_total
        return unavailable
    if isinstance(exc, SanicException):
        cls = _SANIC_CODES.get(exc.status_code)
        if cls is not None:
            err = cls()
            # 405 must say what is allowed (RFC 9110 Allow); Sanic puts it on its exception.
            allow = (getattr(exc, "headers", None) or {}).get("Allow")
            if allow:
                err.headers = {"Allow": allow}
            return err
        err = ChatError(str(exc.message) if exc.message else "Error.")
        err.status = exc.status_code
        return err
    err = ChatError("Internal server error.")
    err.status, err.code = 500, "internal_error"
    return err


def error_response(err: ChatError) -> HTTPResponse:
    return json(err.body(), status=err.status, headers=err.headers or None)


def allowed_methods(request: Request) -> str:
    """The methods the router serves on this request's path, for a 405's Allow header."""
    found = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        try:
            request.app.router.get(request.path, method, request.headers.get("host"))
        except Exception:  # noqa: BLE001 - NotFound / MethodNotAllowed: not this one
            continue
        found.append(method)
    return ", ".join(found)


def register_error_handlers(app: Sanic) -> None:
    """Map every exception to the API envelope, once, for the whole app."""

    @app.exception(Exception)
    async def _handle(request: Request, exc: Exception) -> HTTPResponse:
        err = to_chat_error(exc)
        if err.status >= 500 and err.code == "internal_error":
            log.exception("unhandled error on %s %s", request.method, request.path, exc_info=exc)
        elif err.status == 503 and not isinstance(exc, ChatError):
            # A backing service failed under a request: say which call and why, for operators.
            log.warning("%s %s: %s (%r)", request.method, request.path, err.message, exc)
        if err.status == 405 and "Allow" not in err.headers:
            # Methods the router does not know at all (TRACE, CONNECT) come without a list.
            allow = allowed_methods(request)
            if allow:
                err.headers = {**err.headers, "Allow": allow}
        allow_drain(request)  # refused with body unread: read it away so the client sees this answer
        return error_response(err)
