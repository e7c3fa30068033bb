"""Cell values as the Sheets API sees them: input parsing, rendering, number formats, A1 ranges.

Enough of Google's semantics for RAW and USER_ENTERED writes and the three render options:
RAW keeps text as text ("=IMPORTXML(...)" stays a string); USER_ENTERED turns numbers, booleans,
ISO dates/date-times and simple arithmetic formulas into typed values; FORMATTED_VALUE renders a
number through its cell's number format (dates as ``yyyy-mm-dd``), UNFORMATTED_VALUE gives the
number itself, FORMULA gives the formula text.
"""

from __future__ import annotations

import ast
import datetime as dt
import operator
import re
from dataclasses import dataclass
from typing import Any

EPOCH = dt.datetime(1899, 12, 30)  # day 0 of the serial-number calendar
MAX_COLUMNS = 18278  # ZZZ


class RangeError(ValueError):
    """An A1 string Google cannot parse ("Unable to parse range: ...")."""


# --- input ------------------------------------------------------------------------------------


def raw_input(value: Any) -> dict[str, Any] | None:
    """valueInputOption=RAW: the value as given; "" clears the cell."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, (int, float)):
        return {"numberValue": value}
    return {"stringValue": str(value)}


_DATE = re.compile(r"^(\d{4})[-/](\d{1,2})[-/](\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def user_entered_input(value: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """valueInputOption=USER_ENTERED: (userEnteredValue, number format it implies)."""
    if not isinstance(value, str):
        return raw_input(value), None
    text = value
    if text == "":
        return None, None
    if text.startswith("'"):
        return {"stringValue": text[1:]}, None
    if text.startswith("=") and len(text) > 1:
        return {"formulaValue": text}, None
    if text.upper() in ("TRUE", "FALSE"):
        return {"boolValue": text.upper() == "TRUE"}, None
    stripped = text.strip()
    if _NUMBER.match(stripped):
        return {"numberValue": _num(float(stripped))}, None
    if stripped.endswith("%") and _NUMBER.match(stripped[:-1].strip()):
        percent = float(stripped[:-1]) / 100
        return {"numberValue": _num(percent)}, {"type": "PERCENT", "pattern": "0%"}
    m = _DATE.match(stripped)
    if m:
        year, month, day = int(m[1]), int(m[2]), int(m[3])
        try:
            moment = dt.datetime(year, month, day, int(m[4] or 0), int(m[5] or 0), int(m[6] or 0))
        except ValueError:
            return {"stringValue": text}, None
        serial = _num((moment - EPOCH) / dt.timedelta(days=1))
        if m[4] is None:
            return {"numberValue": serial}, {"type": "DATE", "pattern": "yyyy-mm-dd"}
        return {"numberValue": serial}, {"type": "DATE_TIME", "pattern": "yyyy-mm-dd hh:mm:ss"}
    return {"stringValue": text}, None


# --- formulas ---------------------------------------------------------------------------------

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}


def evaluate(formula: str) -> dict[str, Any]:
    """Effective value of a formula: arithmetic on numbers only; anything else is #NAME?."""
    try:
        tree = ast.parse(formula[1:].replace("^", "**"), mode="eval")
        return {"numberValue": _num(_eval(tree.body))}
    except ZeroDivisionError:
        return {
            "errorValue": {
                "type": "DIVIDE_BY_ZERO",
                "message": "Function DIVIDE parameter 2 cannot be zero.",
            }
        }
    except (SyntaxError, ValueError, TypeError):
        name = formula[1:].split("(", 1)[0].strip().upper() or "?"
        return {"errorValue": {"type": "NAME", "message": f"Unknown function: '{name}'."}}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _eval(node.operand)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    raise ValueError("not arithmetic")


def effective_value(user: dict[str, Any] | None) -> dict[str, Any] | None:
    if user is None:
        return None
    if "formulaValue" in user:
        return evaluate(user["formulaValue"])
    return dict(user)


# --- output -----------------------------------------------------------------------------------

_ERROR_TEXT = {"NAME": "#NAME?", "DIVIDE_BY_ZERO": "#DIV/0!", "VALUE": "#VALUE!", "REF": "#REF!"}


def formatted(effective: dict[str, Any] | None, number_format: dict[str, Any] | None) -> str | None:
    """FORMATTED_VALUE text of a cell, or None for an empty cell."""
    if effective is None:
        return None
    if "stringValue" in effective:
        return effective["stringValue"]
    if "boolValue" in effective:
        return "TRUE" if effective["boolValue"] else "FALSE"
    if "errorValue" in effective:
        return _ERROR_TEXT.get(effective["errorValue"].get("type", ""), "#ERROR!")
    return format_number(effective["numberValue"], number_format)


def rendered(
    user: dict[str, Any] | None,
    number_format: dict[str, Any] | None,
    value_render: str,
    date_render: str,
) -> Any:
    """One cell as values.get returns it under valueRenderOption / dateTimeRenderOption."""
    effective = effective_value(user)
    if effective is None:
        return None
    if value_render == "FORMULA" and user is not None and "formulaValue" in user:
        return user["formulaValue"]
    if value_render == "FORMATTED_VALUE":
        return formatted(effective, number_format)
    if "numberValue" in effective:
        is_date = (number_format or {}).get("type") in ("DATE", "TIME", "DATE_TIME")
        if is_date and date_render == "FORMATTED_STRING":
            return format_number(effective["numberValue"], number_format)
        return _num(effective["numberValue"])
    if "errorValue" in effective:
        return formatted(effective, number_format)
    return effective.get("stringValue", effective.get("boolValue"))


def format_number(value: float, number_format: dict[str, Any] | None) -> str:
    kind = (number_format or {}).get("type")
    pattern = (number_format or {}).get("pattern", "")
    if kind in ("DATE", "TIME", "DATE_TIME"):
        default = {"DATE": "yyyy-mm-dd", "TIME": "hh:mm:ss", "DATE_TIME": "yyyy-mm-dd hh:mm:ss"}
        return format_serial(value, pattern or default[kind])
    if kind == "PERCENT":
        decimals = len(pattern.split(".", 1)[1].rstrip("%")) if "." in pattern else 0
        return f"{value * 100:.{decimals}f}%"
    if kind == "NUMBER" and re.fullmatch(r"0(\.0+)?", pattern):
        decimals = len(pattern) - 2 if "." in pattern else 0
        return f"{value:.{decimals}f}"
    if kind == "TEXT":
        return general_number(value)
    return general_number(value)


def general_number(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.15g}".replace("e", "E")


_DATE_TOKEN = re.compile(r'yyyy|yy|mmmm|mmm|mm|m|dd|d|hh|h|ss|s|"[^"]*"|.', re.IGNORECASE)


def format_serial(serial: float, pattern: str) -> str:
    moment = EPOCH + dt.timedelta(days=serial)
    moment = (moment + dt.timedelta(microseconds=500_000)).replace(microsecond=0)
    tokens = _DATE_TOKEN.findall(pattern)
    out = []
    for i, token in enumerate(tokens):
        low = token.lower()
        if low in ("m", "mm"):
            before = next((t.lower() for t in reversed(tokens[:i]) if t.strip(" :-/.")), "")
            after = next((t.lower() for t in tokens[i + 1 :] if t.strip(" :-/.")), "")
            minutes = before.startswith("h") or after.startswith("s")
            number = moment.minute if minutes else moment.month
            out.append(f"{number:02d}" if low == "mm" else str(number))
        elif low == "yyyy":
            out.append(f"{moment.year:04d}")
        elif low == "yy":
            out.append(f"{moment.year % 100:02d}")
        elif low == "mmmm":
            out.append(moment.strftime("%B"))
        elif low == "mmm":
            out.append(moment.strftime("%b"))
        elif low in ("dd", "d"):
            out.append(f"{moment.day:02d}" if low == "dd" else str(moment.day))
        elif low in ("hh", "h"):
            out.append(f"{moment.hour:02d}" if low == "hh" else str(moment.hour))
        elif low in ("ss", "s"):
            out.append(f"{moment.second:02d}" if low == "ss" else str(moment.second))
        elif token.startswith('"'):
            out.append(token[1:-1])
        else:
            out.append(token)
    return "".join(out)


def _num(value: float) -> int | float:
    """JSON numbers as Google writes them: 2, not 2.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


# --- A1 notation ------------------------------------------------------------------------------


def column_letters(col: int) -> str:
    # Not gpumon.sheet.grid.column_letter on purpose: the fake must not share the client's bugs.
    letters = ""
    col += 1
    while col:
        col, rem = divmod(col - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


def column_index(letters: str) -> int:
    number = 0
    for ch in letters.upper():
        number = number * 26 + (ord(ch) - ord("A") + 1)
    return number - 1


@dataclass
class A1:
    """A parsed A1 range; None bounds are open ("A:A", "1:3", a bare sheet name)."""

    sheet: str | None
    start_row: int | None = None
    end_row: int | None = None  # exclusive
    start_col: int | None = None
    end_col: int | None = None  # exclusive


_CELL = re.compile(r"^([A-Za-z]{0,3})(\d*)$")


def parse_a1(text: str) -> A1:
    sheet: str | None = None
    ref = text
    if text.startswith("'"):
        end = _closing_quote(text)
        sheet = text[1:end].replace("''", "'")
        rest = text[end + 1 :]
        if rest and not rest.startswith("!"):
            raise RangeError(text)
        ref = rest[1:]
    elif "!" in text:
        sheet, ref = text.rsplit("!", 1)
    elif not _looks_like_ref(text):
        return A1(sheet=text)
    if ref == "":
        return A1(sheet=sheet)
    parts = ref.split(":")
    if len(parts) > 2:
        raise RangeError(text)
    first = _cell(parts[0], text)
    last = _cell(parts[1], text) if len(parts) == 2 else first
    r1, c1 = first
    r2, c2 = last
    a1 = A1(sheet=sheet)
    if r1 is not None or r2 is not None:
        a1.start_row = r1 if r1 is not None else 0
        a1.end_row = r2 + 1 if r2 is not None else None
    if c1 is not None or c2 is not None:
        a1.start_col = c1 if c1 is not None else 0
        a1.end_col = c2 + 1 if c2 is not None else None
    if len(parts) == 1 and (r1 is None or c1 is None):
        raise RangeError(text)
    return a1


def _closing_quote(text: str) -> int:
    i = 1
    while i < len(text):
        if text[i] == "'":
            if i + 1 < len(text) and text[i + 1] == "'":
                i += 2
                continue
            return i
        i += 1
    raise RangeError(text)


def _looks_like_ref(text: str) -> bool:
    """ "A1:B2", "A:A", "1:3", "B4" — as opposed to a bare sheet title."""
    parts = text.split(":")
    if len(parts) > 2 or not all(part and _CELL.match(part) for part in parts):
        return False
    return len(parts) == 2 or bool(re.fullmatch(r"[A-Za-z]{1,3}\d+", text))


def _cell(ref: str, whole: str) -> tuple[int | None, int | None]:
    m = _CELL.match(ref)
    if not m or not ref:
        raise RangeError(whole)
    letters, digits = m.groups()
    row = int(digits) - 1 if digits else None
    col = column_index(letters) if letters else None
    if row is not None and row < 0:
        raise RangeError(whole)
    return row, col


def quote_title(title: str) -> str:
    """A sheet title as Google writes it in a range: bare when it can be, else quoted."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", title) and not re.fullmatch(
        r"[A-Za-z]{1,3}\d+", title
    ):
        return title
    return "'" + title.replace("'", "''") + "'"


def a1_range(title: str, start_row: int, end_row: int, start_col: int, end_col: int) -> str:
    first = f"{column_letters(start_col)}{start_row + 1}"
    last = f"{column_letters(end_col - 1)}{end_row}"
    return f"{quote_title(title)}!{first}" + ("" if first == last else f":{last}")
