"""The sandboxed Jinja2 environment that renders OS templates.

Templates come from the data folder (or IPFS): operator data, trusted to say
what to boot, but rendered in :class:`ImmutableSandboxedEnvironment` so a
template cannot reach Python internals or change the context. Values from
clients are made safe twice: the context carries only sanitised strings
(see ``context.py``), and in iPXE scripts every ``{{ value }}`` is made one
harmless word (:func:`~astralboot.services.httpd.scripts.ipxe_word`) unless
marked ``|raw``.

A template is compiled once per content digest. Old Go templates
(``{{ .Name }}``) are translated first (``gotemplate.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from astralboot.services.httpd import gotemplate
from astralboot.services.httpd.cache import Lru
from astralboot.services.httpd.errors import BadTemplate, GoTemplateError
from astralboot.services.httpd.scripts import MAGIC, ipxe_word


def _raw(value: object) -> Markup:
    """Mark a value as literal script text (the template author vouches for it)."""
    return Markup(str(value))


def _ipxe_finalize(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Markup):  # |raw, |tojson
        return str(value)
    if isinstance(value, (bool, int, float)):
        return value
    return ipxe_word(value)


def _text_finalize(value: Any) -> Any:
    return "" if value is None else value


def _environment(ipxe: bool, strict: bool) -> ImmutableSandboxedEnvironment:
    # Jinja templates fail loudly on a misspelt name; translated Go templates
    # keep Go's zero values (an absent field is empty, and false in an if).
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined if strict else jinja2.Undefined,
        finalize=_ipxe_finalize if ipxe else _text_finalize,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["raw"] = _raw
    env.filters["ipxe"] = lambda v: Markup(ipxe_word(v))
    return env


_ENVS = {(ipxe, strict): _environment(ipxe, strict)
         for ipxe in (True, False) for strict in (True, False)}

# Names whose values cost a bus request; fetched only for templates that use them.
LEASE_NAMES = frozenset({"lease", "Lease"})
CLUSTER_NAMES = frozenset({"cluster", "Cluster"})


@dataclass(frozen=True)
class Compiled:
    path: str
    template: jinja2.Template
    needs: frozenset[str]  # context names the template refers to
    ipxe: bool
    digest: str = ""

    @property
    def needs_lease(self) -> bool:
        return bool(self.needs & LEASE_NAMES)

    @property
    def needs_cluster(self) -> bool:
        return bool(self.needs & CLUSTER_NAMES)

    def render(self, context: dict[str, Any]) -> str:
        try:
            return self.template.render(context)
        except jinja2.TemplateError as exc:
            raise BadTemplate(self.path, _describe(exc, self.path)) from None
        except (ArithmeticError, LookupError, TypeError, ValueError) as exc:
            where = _where(exc, self.path)
            raise BadTemplate(self.path, f"{where}{type(exc).__name__}: {exc}") from None


def _where(exc: BaseException, path: str) -> str:
    """"line N: " from the template's frame in the traceback (Jinja rewrites it)."""
    line = getattr(exc, "lineno", None)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"line {line}: " if line else ""


def _describe(exc: jinja2.TemplateError, path: str) -> str:
    return f"{_where(exc, path)}{exc.message or type(exc).__name__}"


def compile_source(path: str, source: str) -> Compiled:
    """Compile a template's text; ``path`` names it in errors."""
    go = gotemplate.looks_like_go(source)
    if go:
        try:
            source = gotemplate.translate(source)
        except GoTemplateError as exc:
            raise BadTemplate(path, f"old Go template: {exc}") from None
    ipxe = source.lstrip().startswith(MAGIC)
    env = _ENVS[ipxe, not go]
    try:
        ast = env.parse(source, name=path, filename=path)
        code = env.compile(ast, name=path, filename=path)
        template = env.template_class.from_code(env, code, env.make_globals(None))
    except jinja2.TemplateSyntaxError as exc:
        raise BadTemplate(path, _describe(exc, path)) from None
    return Compiled(path=path, template=template,
                    needs=frozenset(meta.find_undeclared_variables(ast)), ipxe=ipxe)


class TemplateCache:
    """Compiled templates by content digest: a changed file is a new digest."""

    def __init__(self, size: int = 512) -> None:
        self._lru: Lru[str, Compiled] = Lru(size)

    def get(self, digest: str, path: str, source: bytes) -> Compiled:
        found = self._lru.get(digest)
        if found is not None:
            return found
        try:
            text = source.decode("utf-8")
        except UnicodeDecodeError:
            raise BadTemplate(path, "is not UTF-8 text") from None
        return self._lru.put(digest, replace(compile_source(path, text), digest=digest))
