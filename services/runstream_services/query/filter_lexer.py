"""The filter language's tokenizer, and the error every filter mistake raises: the message names
the column and shows the filter with a caret under the mistake. The grammar and the parser that
consumes these tokens are in filter.py."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from runstream_services.errors import InvalidArgument

MAX_FILTER_CHARS = 10_000
_OPERATORS = ("==", "!=", "<>", "<=", ">=", "=", "<", ">", "~")
_WORD_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_WORD_CHARS = _WORD_START | set("0123456789-/")
_NUMBER = re.compile(r"[+-]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'", "`": "`"}


@dataclass(frozen=True)
class Token:
    kind: str  # word, quoted_key, string, number, op, lparen, rparen, comma, dot, sign, end
    text: str  # the value (unescaped for strings and quoted keys)
    pos: int  # 0-based offset in the filter


class FilterError(InvalidArgument):
    """Raised when a filter or sort field cannot be parsed; the message points at the mistake."""

    def __init__(self, message: str, source: str, pos: int, found: str = ""):
        self.pos = pos
        found = f", found {found}" if found else ""
        super().__init__(f"{message} at column {pos + 1}{found}\n{_caret(source, pos)}")


def _caret(source: str, pos: int, width: int = 80) -> str:
    """The filter (a window of it when long) with a caret under `pos`."""
    flat = source.replace("\n", " ").replace("\t", " ").replace("\r", " ")
    start = max(0, min(pos - width // 2, len(flat) - width))
    shown = flat[start : start + width]
    prefix = "…" if start > 0 else ""
    suffix = "…" if start + width < len(flat) else ""
    return f"  {prefix}{shown}{suffix}\n  {' ' * (len(prefix) + pos - start)}^"


def tokenize(source: str, signs: bool = False) -> list[Token]:
    """The tokens of `source`, ending with an "end" token; FilterError at the first bad character.
    With `signs` (sort keys), a '-' or '+' that does not start a number is a "sign" token."""
    if len(source) > MAX_FILTER_CHARS:
        raise InvalidArgument(
            f"filter is {len(source)} characters long; at most {MAX_FILTER_CHARS} are allowed"
        )
    tokens: list[Token] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch.isspace():
            i += 1
        elif ch in _WORD_START or (ch.isdigit() and tokens and tokens[-1].kind == "dot"):
            j = i + 1
            while j < n and source[j] in _WORD_CHARS:
                j += 1
            tokens.append(Token("word", source[i:j], i))
            i = j
        elif ch.isdigit() or (
            ch in "-+." and i + 1 < n and source[i + 1].isdigit() and _value_expected(tokens)
        ):
            m = _NUMBER.match(source, i)
            j = m.end() if m else i + 1
            while j < n and (source[j] in _WORD_CHARS or source[j] == "."):
                j += 1  # swallow trailing junk so the error names the whole word
            text = source[i:j]
            try:
                number = float(text.replace("_", ""))
            except ValueError:
                raise FilterError(f"{text!r} is not a number", source, i) from None
            if not math.isfinite(number):
                raise FilterError(f"{text!r} is out of range", source, i)
            tokens.append(Token("number", text, i))
            i = j
        elif ch in "\"'`":
            text, j = _quoted(source, i)
            tokens.append(Token("quoted_key" if ch == "`" else "string", text, i))
            i = j
        elif ch == "(":
            tokens.append(Token("lparen", ch, i))
            i += 1
        elif ch == ")":
            tokens.append(Token("rparen", ch, i))
            i += 1
        elif ch == ",":
            tokens.append(Token("comma", ch, i))
            i += 1
        elif ch == ".":
            tokens.append(Token("dot", ch, i))
            i += 1
        elif signs and ch in "-+":
            tokens.append(Token("sign", ch, i))
            i += 1
        else:
            op = next((o for o in _OPERATORS if source.startswith(o, i)), None)
            if op is None:
                raise FilterError(f"unexpected character {ch!r}", source, i)
            tokens.append(Token("op", {"==": "=", "<>": "!="}.get(op, op), i))
            i += len(op)
    tokens.append(Token("end", "", n))
    return tokens


def _value_expected(tokens: list[Token]) -> bool:
    return not tokens or tokens[-1].kind in ("op", "comma", "lparen")


def _quoted(source: str, start: int) -> tuple[str, int]:
    quote = source[start]
    out: list[str] = []
    i = start + 1
    while i < len(source):
        ch = source[i]
        if ch == "\\":
            if i + 1 >= len(source):
                break
            nxt = source[i + 1]
            if nxt not in _ESCAPES:
                raise FilterError(f"unknown escape '\\{nxt}' (use \\\\ for a backslash)", source, i)
            out.append(_ESCAPES[nxt])
            i += 2
        elif ch == quote:
            if quote == "`" and not out and i == start + 1:
                raise FilterError("empty `key`", source, start)
            return "".join(out), i + 1
        else:
            out.append(ch)
            i += 1
    what = "key" if quote == "`" else "string"
    raise FilterError(f"unterminated {what}: no closing {quote}", source, start)
