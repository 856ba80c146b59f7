"""The project's exceptions, rooted in one class.

Who is at fault decides the branch: a remote peer sent bad bytes
(:class:`RemoteProtocolError`, counted and dropped by the I/O loop), the
operator wrote a bad setting (:class:`ConfigError`), or a dependency is
missing or slow (:class:`BusError` and friends, raised within a deadline).
Anything else is a bug and may crash the process; its supervisor restarts it.
"""

from __future__ import annotations

import enum


class AstralBootError(Exception):
    """Root of every error AstralBoot raises on purpose."""


class ErrorCode(str, enum.Enum):
    """The closed set of error codes a bus reply may carry (see DESIGN.md)."""

    NOT_FOUND = "not_found"
    POOL_EXHAUSTED = "pool_exhausted"
    UNAVAILABLE = "unavailable"
    BAD_REQUEST = "bad_request"
    CONFLICT = "conflict"
    FORBIDDEN = "forbidden"  # the peer's bus key may not send this request
    INTERNAL = "internal"


class ConfigError(AstralBootError):
    """A setting is wrong; names the file, the key and the problem."""

    def __init__(self, file: object, key: str, problem: str) -> None:
        self.file = str(file)
        self.key = key
        self.problem = problem
        super().__init__(f"{self.file}: {key}: {problem}")


class ConfigErrors(ConfigError):
    """Several settings are wrong at once; every one is reported."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(first.file, first.key, first.problem)
        self.args = ("\n".join(str(e) for e in self.errors),)

    def __str__(self) -> str:
        return self.args[0]


class StartupError(AstralBootError):
    """A service cannot start: port in use, interface missing, no permission."""

    def __init__(self, service: str, reason: str) -> None:
        self.service = service
        self.reason = reason
        super().__init__(f"{service}: cannot start: {reason}")


class BusError(AstralBootError):
    """Something went wrong talking over the ZeroMQ bus."""


class BusTimeout(BusError):
    """The peer did not answer within the request's deadline."""

    def __init__(self, endpoint: str, kind: str, deadline: float, attempts: int) -> None:
        self.endpoint = endpoint
        self.kind = kind
        self.deadline = deadline
        self.attempts = attempts
        super().__init__(
            f"no reply to {kind} from {endpoint} within {deadline:.2f}s ({attempts} attempts)"
        )


class RemoteError(BusError):
    """The peer answered with an error reply; ``code`` says what kind."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        self.code = ErrorCode(code)
        self.detail = detail
        super().__init__(f"{self.code.value}: {detail}")


class MalformedMessage(BusError):
    """A bus frame could not be decoded into a known, valid message.

    ``request_id`` is set when the frame was readable enough to answer.
    """

    def __init__(self, reason: str, request_id: int | None = None) -> None:
        self.reason = reason
        self.request_id = request_id
        super().__init__(reason)


class RemoteProtocolError(AstralBootError):
    """A network peer sent bytes that break the protocol (DHCP, TFTP, ...).

    Each codec subclasses this once; the I/O loop counts, logs once, drops.
    """
