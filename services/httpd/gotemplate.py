"""Reading the original server's Go templates as Jinja2.

Old data folders have templates like ``{{ .Name }}`` or
``#!ipxe{{ $serverIP := .BaseIP }}`` with ``{{ if .X }}``/``{{ range }}``.
This translates the subset those templates used into Jinja2 source, which
then runs in the same sandbox with the same escaping as any template:

- fields and chains: ``.Name``, ``.Config.Domain``, ``$v``, ``$v.IP``, ``$.BaseIP``, ``.``
- ``{{ $v := PIPE }}``; ``{{ if PIPE }}``, ``{{ else }}``, ``{{ else if PIPE }}``,
  ``{{ end }}``; ``{{ range PIPE }}``, ``{{ range $e := PIPE }}``,
  ``{{ range $i, $e := PIPE }}`` (``.`` is the element inside);
- PIPE is one operand, or ``not``/``eq``/``ne``/``and``/``or`` applied to operands;
  string and number literals; ``{{/* comments */}}``; ``{{-`` and ``-}}``.

Anything else raises :class:`~.errors.GoTemplateError` naming the action, so
an old template fails loudly instead of rendering something half right.
"""

from __future__ import annotations

import re

from astralboot.services.httpd.errors import GoTemplateError

_ACTION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.S)
_LOOKS_GO = re.compile(r"\{\{-?\s*(?:[.$]|(?:if|range|with|end|else)\b(?:\s+[.$])?|/\*)")
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|\$?[A-Za-z_][\w]*(?:\.\w+)*'
                    r'|\$(?:\.\w+)*|\.(?:\w+(?:\.\w+)*)?|:=|,)')


def looks_like_go(source: str) -> bool:
    """True when ``source`` uses Go template actions (``{{ .X }}``, ``{{ $x }}``...)."""
    return bool(_LOOKS_GO.search(source))


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or not m.group(1):
            raise GoTemplateError(f"cannot read {text!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


class _Translator:
    def __init__(self) -> None:
        self.blocks: list[str] = []   # "if" / "for"
        self.dots: list[str] = []     # what "." means inside range blocks
        self.counter = 0

    def operand(self, tok: str) -> str:
        if tok.startswith('"') or re.fullmatch(r"-?\d+(\.\d+)?", tok):
            return tok
        if tok in ("true", "false", "nil"):
            return {"true": "true", "false": "false", "nil": "none"}[tok]
        if tok == ".":
            if not self.dots:
                raise GoTemplateError("'.' outside range is not supported; name a field")
            return self.dots[-1]
        if tok.startswith("$."):
            return tok[2:]
        if tok.startswith("."):
            base = tok[1:]
            return f"{self.dots[-1]}.{base}" if self.dots else base
        if tok.startswith("$"):
            head, _, rest = tok[1:].partition(".")
            return f"v_{head}" + (f".{rest}" if rest else "")
        raise GoTemplateError(f"function {tok!r} is not supported")

    def pipeline(self, toks: list[str]) -> str:
        if not toks:
            raise GoTemplateError("empty pipeline")
        head = toks[0]
        args = [self.operand(t) for t in toks[1:]]
        if head == "not" and len(args) == 1:
            return f"(not {args[0]})"
        if head in ("eq", "ne") and len(args) == 2:
            return f"({args[0]} {'==' if head == 'eq' else '!='} {args[1]})"
        if head in ("and", "or") and len(args) >= 2:
            return "(" + f" {head} ".join(args) + ")"
        if len(toks) == 1:
            return self.operand(head)
        raise GoTemplateError(f"pipeline {' '.join(toks)!r} is not supported")

    def action(self, body: str) -> str:
        body = body.strip()
        if body.startswith("/*"):
            return ""
        toks = _tokens(body)
        if not toks:
            raise GoTemplateError("empty action")
        word = toks[0]
        if word == "end":
            if not self.blocks:
                raise GoTemplateError("{{ end }} without an open block")
            kind = self.blocks.pop()
            if kind == "for":
                self.dots.pop()
            return "{% endfor %}" if kind == "for" else "{% endif %}"
        if word == "else":
            if len(toks) > 2 and toks[1] == "if":
                return f"{{% elif {self.pipeline(toks[2:])} %}}"
            return "{% else %}"
        if word == "if":
            self.blocks.append("if")
            return f"{{% if {self.pipeline(toks[1:])} %}}"
        if word == "range":
            return self.range(toks[1:])
        if word in ("with", "define", "template", "block"):
            raise GoTemplateError(f"{{{{ {word} }}}} is not supported")
        if len(toks) >= 3 and toks[0].startswith("$") and toks[1] == ":=":
            return f"{{% set {self.operand(toks[0])} = {self.pipeline(toks[2:])} %}}"
        return f"{{{{ {self.pipeline(toks)} }}}}"

    def range(self, toks: list[str]) -> str:
        index = elem = None
        if ":=" in toks:
            at = toks.index(":=")
            names = [t for t in toks[:at] if t != ","]
            if len(names) == 1:
                elem = names[0]
            elif len(names) == 2:
                index, elem = names
            else:
                raise GoTemplateError("range takes at most two variables")
            toks = toks[at + 1:]
        source = self.pipeline(toks)
        self.counter += 1
        var = self.operand(elem) if elem else f"go_item{self.counter}"
        self.blocks.append("for")
        self.dots.append(var)
        out = f"{{% for {var} in {source} %}}"
        if index:
            out += f"{{% set {self.operand(index)} = loop.index0 %}}"
        return out


def translate(source: str) -> str:
    """Jinja2 source equivalent to the Go template ``source``."""
    t = _Translator()
    out: list[str] = []
    pos = 0
    for m in _ACTION.finditer(source):
        text = source[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        out.append(text.replace("{%", "{{ '{%' }}").replace("{#", "{{ '{#' }}"))
        try:
            out.append(t.action(m.group(2)))
        except GoTemplateError as exc:
            line = source.count("\n", 0, m.start()) + 1
            raise GoTemplateError(f"line {line}: {{{{{m.group(2)}}}}}: {exc}") from None
        pos = m.end()
        if m.group(3):
            rest = source[pos:]
            pos += len(rest) - len(rest.lstrip())
    out.append(source[pos:].replace("{%", "{{ '{%' }}").replace("{#", "{{ '{#' }}"))
    if t.blocks:
        raise GoTemplateError(f"{len(t.blocks)} block(s) not closed with {{{{ end }}}}")
    return "".join(out)
