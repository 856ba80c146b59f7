"""httpd's own errors, rooted under the project's :class:`AstralBootError`.

Who is at fault decides the class, and ``app.py`` maps each to HTTP once:

- :class:`BadInput`: the client sent a URL segment or body we refuse (400);
- :class:`BadTemplate`: an operator's template does not compile or render (500);
- :class:`Unserved` and its kinds: the content is not there or not fit to
  serve. Each carries one of the bus's error codes and is answered exactly
  as a store reply with that code would be (``not_found`` is 404, ...), so
  a miss looks the same whether this process or the store noticed it.

Errors the store itself answers stay :class:`~astralboot.common.errors.RemoteError`.
"""

from __future__ import annotations

from typing import ClassVar

from astralboot.common.errors import AstralBootError, ErrorCode


class HttpdError(AstralBootError):
    """Root of every error httpd raises on purpose."""


class BadInput(HttpdError):
    """A client sent a path segment or body that is not acceptable (HTTP 400)."""


class BadTemplate(HttpdError):
    """A template cannot be compiled or rendered; names the file and line."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: {detail}")


class GoTemplateError(HttpdError):
    """An old Go template uses a construct outside the translated subset.

    Raised by the translator alone; compiling turns it into :class:`BadTemplate`.
    """


class Unserved(HttpdError):
    """Content httpd cannot serve; ``code`` says why, as a store reply would."""

    code: ClassVar[ErrorCode]

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"{self.code.value}: {detail}")


class NotFound(Unserved):
    """No such file, template or bootable OS folder."""

    code = ErrorCode.NOT_FOUND


class UnfitContent(Unserved):
    """The path names a folder where a file was wanted, or a file too large for a template."""

    code = ErrorCode.BAD_REQUEST


class NoLocalCopy(Unserved):
    """The cached copy of a file's bytes is gone or failed its check; a retry fetches it again."""

    code = ErrorCode.UNAVAILABLE
