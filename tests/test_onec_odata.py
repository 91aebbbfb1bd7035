"""Pure protocol helpers of the 1C connector: literals, encoding, batching, errors, $metadata."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.errors import OutcomeUnknownError, PermanentError, TransientError
from daemon.onec import odata
from daemon.onec.metadata import (
    GROUP_114,
    detect_schema,
    metadata_object,
    parse_metadata,
    types_to_keep,
    verify_published,
)
from daemon.onec.transport import classify
from daemon.sandbox.onec_filter import Compare, Field, Literal, parse_filter
from daemon.sandbox.onec_params import parse_params
from daemon.sandbox.onec_schema import entity_defs, enums, render_metadata

GUID = "3aa3cd58-c109-11e6-a7a6-5404a6b4b8ed"


@given(st.text(min_size=0, max_size=40))
def test_any_value_stays_one_literal(value: str) -> None:
    """Whatever a warehouse is called, the filter built from it compares one field to that text."""
    expression = odata.eq("Description", odata.literal(value))
    assert parse_filter(expression) == Compare("eq", Field("Description"), Literal(value))


def test_injection_attempt_is_just_a_name() -> None:
    """A name written to break out of its literal is compared as a whole, nothing more."""
    evil = "x' or IsFolder eq true or Description eq 'y"
    tree = parse_filter(
        odata.all_of("DeletionMark eq false", odata.eq("Description", odata.literal(evil)))
    )
    assert tree.parts[1] == Compare("eq", Field("Description"), Literal(evil))  # type: ignore[union-attr]


def test_guid_literal_refuses_anything_but_a_guid() -> None:
    """A key from config or data cannot smuggle an expression through guid'…'."""
    assert odata.guid(GUID.upper()) == f"guid'{GUID}'"
    with pytest.raises(ValueError):
        odata.guid(f"{GUID}' or 1 eq 1 or Ref_Key eq guid'{GUID}")


def test_names_must_be_identifiers() -> None:
    """Property names are checked before they are spliced into an expression."""
    assert odata.eq("Склад_Key", "1") == "Склад_Key eq 1"
    with pytest.raises(ValueError):
        odata.eq("Description eq 'a' or Code", "1")


def test_condition_quotes_are_doubled_twice() -> None:
    """A literal inside Condition='…' is doubled again and reads back unchanged."""
    condition = odata.eq("Description", odata.literal("O'Брайен"))
    segment = odata.call("Balance", Condition=condition, Dimensions="Номенклатура,Склад")
    assert segment == (
        "Balance(Condition='Description eq ''O''''Брайен''',Dimensions='Номенклатура,Склад')"
    )
    params = parse_params(segment[len("Balance(") : -1])
    assert params == {"Condition": condition, "Dimensions": "Номенклатура,Склад"}


def test_query_encoding_uses_percent20_and_hides_separators() -> None:
    """Spaces go as %20, never '+'; '+', '&', '#', '%' and '=' in values cannot split the query."""
    url = odata.relative_url(
        "Catalog_Склады",
        [("$format", "json"), ("$filter", "Description eq 'A+B & C #1 = 100%'")],
    )
    path, _, query = url.partition("?")
    assert path == "Catalog_%D0%A1%D0%BA%D0%BB%D0%B0%D0%B4%D1%8B"
    assert "+" not in url and " " not in url
    assert "%20eq%20" in query
    pairs = query.split("&")
    assert len(pairs) == 2
    assert unquote(pairs[1].split("=", 1)[1]) == "Description eq 'A+B & C #1 = 100%'"


def test_batches_stay_under_the_limit_and_keep_every_value() -> None:
    """GUID lists are cut so every request fits, in order, none lost."""
    keys = [odata.guid(f"00000000-0000-0000-0000-{n:012d}") for n in range(200)]

    def render(run: Sequence[str]) -> str:
        where = odata.any_of("ЗаказНаПеремещение_Key", list(run))
        return odata.relative_url("Document_ЗаказНаПеремещение", [("$filter", where)])

    runs = odata.batches(keys, render, 2048)
    assert len(runs) > 1
    assert [k for run in runs for k in run] == keys
    assert all(len(render(run)) <= 2048 for run in runs)
    with pytest.raises(PermanentError, match="max_url_bytes"):
        odata.batches(keys, render, 100)


def test_error_bodies_are_parsed_in_both_formats() -> None:
    """odata.error is read from JSON and Atom; other bodies give nothing."""
    body = '{"odata.error":{"code":"-1","message":{"lang":"ru","value":"Отказ"}}}'.encode()
    assert odata.parse_error(body) == ("-1", "Отказ")
    atom = (
        '<?xml version="1.0"?><m:error xmlns:m="http://schemas.microsoft.com/ado/2007/08/'
        'dataservices/metadata"><m:code>14</m:code><m:message xml:lang="ru">Ошибка</m:message>'
        "</m:error>"
    ).encode()
    assert odata.parse_error(atom) == ("14", "Ошибка")
    assert odata.parse_error(b"<html>Bad Gateway</html>") == (None, None)
    assert odata.parse_error(b"") == (None, None)


@pytest.mark.parametrize(
    ("status", "body", "unsafe", "expected"),
    [
        (401, b"", False, PermanentError),
        (403, b"", False, PermanentError),
        (404, b'{"odata.error":{"code":"9","message":{"value":"x"}}}', False, PermanentError),
        (400, b'{"odata.error":{"code":"14","message":{"value":"x"}}}', False, PermanentError),
        (500, b'{"odata.error":{"code":"-1","message":{"value":"x"}}}', True, PermanentError),
        (500, b"<html>cold</html>", False, TransientError),
        (500, b"<html>cold</html>", True, OutcomeUnknownError),
        (502, b"", False, TransientError),
        (503, b"", True, OutcomeUnknownError),
        (429, b"", False, TransientError),
    ],
)
def test_status_classification(status: int, body: bytes, unsafe: bool, expected: type) -> None:
    """Permanent: 4xx and 1C's own refusals; transient: the rest; writes: outcome unknown."""
    error = classify(status, body, what="x", unsafe=unsafe, user="hub")
    assert type(error) is expected
    assert error.status == status


def _edmx(version: str, drop: tuple[str, ...] = ()) -> bytes:
    defs = [d for name, d in entity_defs(version).items() if name not in drop]
    return render_metadata(defs, enums(version))


@pytest.mark.parametrize("version", ["11.4", "11.5"])
def test_version_is_detected_from_metadata(version: str) -> None:
    """The group dimension tells 11.4 from 11.5; the supply option is «Отгрузить» on both."""
    schema = detect_schema(parse_metadata(_edmx(version), types_to_keep()), "auto")
    assert schema.version == version and schema.detected
    assert schema.supply_option == "Отгрузить"
    assert schema.has_priority is (version == "11.5")
    verify_published(parse_metadata(_edmx(version), types_to_keep()), schema)


def test_forcing_the_wrong_version_names_the_missing_property() -> None:
    """ut_version = "11.4" against an 11.5 base fails on Группировка_Key and suggests auto."""
    meta = parse_metadata(_edmx("11.5"), types_to_keep())
    schema = detect_schema(meta, "11.4")
    with pytest.raises(PermanentError) as caught:
        verify_published(meta, schema)
    assert f"InformationRegister_ТоварныеОграничения.{GROUP_114}" in str(caught.value)
    assert '"auto"' in str(caught.value)


def test_missing_objects_are_named_for_the_administrator() -> None:
    """Each unpublished set is listed under the name the 1C administrator picks it by."""
    meta = parse_metadata(
        _edmx("11.5", ("Catalog_Приоритеты", "AccumulationRegister_ЗаказыНаПеремещение")),
        types_to_keep(),
    )
    with pytest.raises(PermanentError) as caught:
        verify_published(meta, detect_schema(meta, "auto"))
    text = str(caught.value)
    assert "Справочник.Приоритеты (Catalog_Приоритеты)" in text
    assert "РегистрНакопления.ЗаказыНаПеремещение" in text
    assert "Catalog_Номенклатура" not in text
    assert metadata_object("Document_ЗаказНаПеремещение_Товары").startswith("Документ.")


def test_empty_composition_is_reported() -> None:
    """A publication with nothing in its composition says so instead of listing everything."""
    with pytest.raises(PermanentError, match="composition is empty"):
        parse_metadata(render_metadata([], {}), types_to_keep())
