"""``Name=value`` lists the 1C emulator reads: compound keys, and the parameters of a bound
function (``Balance(Condition=…, Dimensions=…)``) in each form a server may read them — the
OData one (each value a literal, its quotes doubled), the developer guide's (a quoted value
taken as it is, §17.4.9), or query options (``Balance?Condition=…``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from daemon.sandbox.onec_database import ODataFault
from daemon.sandbox.onec_filter import FilterSyntaxError, parse_filter, tokenize

_PARAM_NAME = re.compile(r"\s*([^\W\d]\w*)\s*=\s*")
_NEXT_PARAM = re.compile(r",\s*[^\W\d]\w*\s*=")


def parse_params(text: str) -> dict[str, Any]:
    """Parse ``Name=literal,Name=literal`` (function parameters and compound keys).

    A single bare literal (``guid'…'``) is returned under the key ``""``.
    """
    tokens = tokenize(text)
    if len(tokens) == 1 and tokens[0].kind == "literal":
        return {"": tokens[0].value}
    params: dict[str, Any] = {}
    index = 0
    while index < len(tokens):
        window = tokens[index : index + 3]
        if (
            len(window) < 3
            or window[0].kind != "name"
            or window[1].text != "="
            or window[2].kind != "literal"
        ):
            raise FilterSyntaxError("expected Name=value")
        params[window[0].text] = window[2].value
        index += 3
        if index < len(tokens):
            if tokens[index].text != ",":
                raise FilterSyntaxError("expected ','")
            index += 1
            if index == len(tokens):
                raise FilterSyntaxError("trailing ','")
    return params


def parse_guide_params(text: str) -> dict[str, Any]:
    """Parse function parameters written as the developer guide writes them (§17.4.9):
    ``Condition='Товар_Key eq guid'value'',Dimensions='Номенклатура'`` — a quoted value is
    taken as it is, with no unescaping, and ends at the first quote that is followed by the
    next ``,Name=`` or by the end. Other values are single literals (``datetime'…'``)."""
    params: dict[str, Any] = {}
    position = 0
    while position < len(text):
        match = _PARAM_NAME.match(text, position)
        if match is None:
            raise FilterSyntaxError("expected Name=value")
        position = match.end()
        if text.startswith("'", position):
            end = position + 1
            while True:
                end = text.find("'", end)
                if end < 0:
                    raise FilterSyntaxError("unterminated value")
                if end + 1 == len(text) or _NEXT_PARAM.match(text, end + 1):
                    break
                end += 1
            params[match.group(1)] = text[position + 1 : end]
            position = end + 1
        else:
            following = _NEXT_PARAM.search(text, position)
            end = following.start() if following else len(text)
            tokens = tokenize(text[position:end])
            if len(tokens) != 1 or tokens[0].kind != "literal":
                raise FilterSyntaxError("expected a literal")
            params[match.group(1)] = tokens[0].value
            position = end
        if position < len(text):
            if text[position] != ",":
                raise FilterSyntaxError("expected ','")
            position += 1
            if position == len(text):
                raise FilterSyntaxError("trailing ','")
    return params


FUNCTION_PARAMS = ("Condition", "Dimensions", "Period")
_READERS: dict[str, tuple[Callable[[str], dict[str, Any]], ...]] = {
    "guide": (parse_guide_params,),
    "doubled": (parse_params,),
    "both": (parse_guide_params, parse_params),
}


def balance_params(
    args: str | None, options: dict[str, str], *, form: str, query_options: str
) -> dict[str, Any]:
    """The parameters of a ``Balance`` call as the emulated server reads them: in the path, in
    ``form`` ("guide": inner quotes as they are, the guide's; "doubled": an OData string
    literal; "both"), or as query options (``query_options``: "accept", "refuse", "ignore").
    A Condition that cannot be parsed is refused as 1C refuses a string it cannot read."""
    in_query = {name: options[name] for name in FUNCTION_PARAMS if name in options}
    if args and in_query:
        raise ODataFault(400, "1", f"Не удалось разобрать строку '{args}'")
    if args:
        for read in _READERS[form]:
            try:
                params = read(args)
                parse_filter(str(params.get("Condition", "true")))
            except FilterSyntaxError:
                continue
            return params
        raise ODataFault(400, "1", f"Не удалось разобрать строку '{args}'")
    if not in_query or query_options == "ignore":
        return {}
    if query_options == "refuse":
        raise ODataFault(400, "14", f"Ошибка при разборе опции запроса {next(iter(in_query))}")
    try:
        parse_filter(in_query.get("Condition", "true"))
    except FilterSyntaxError:
        raise ODataFault(
            400, "1", f"Не удалось разобрать строку '{in_query['Condition']}'"
        ) from None
    return in_query
