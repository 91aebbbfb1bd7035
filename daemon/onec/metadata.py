"""``$metadata``: what the publication exposes, which UT version it is, and what is missing.

A real UT ``$metadata`` is ~17 MB (4,000+ entity sets), so it is parsed as a stream and only the
types the hub uses are kept. From it come

* the version split 11.4 ↔ 11.5 (reference §4.1): the norm register's group dimension
  (``Группировка_Key`` vs ``ГруппировкаТоварныхОграничений_Key``), ``Приоритет_Key`` on the
  order, and the 11.4-only ``AccumulationRegister_СвободныеОстатки``. The supply option of the
  order lines is ``Отгрузить`` on both (``SUPPLY``);
* the list of objects the 1C administrator must add to the OData composition when one is
  missing — a ``PermanentError`` that names each of them.
"""

from __future__ import annotations

import io
from collections.abc import Collection
from dataclasses import dataclass, field
from xml.etree import ElementTree

from daemon.errors import PermanentError

WAREHOUSES = "Catalog_Склады"
ORGANIZATIONS = "Catalog_Организации"
PRIORITIES = "Catalog_Приоритеты"
ITEMS = "Catalog_Номенклатура"
PACKAGES = "Catalog_УпаковкиЕдиницыИзмерения"
NORMS = "InformationRegister_ТоварныеОграничения"
STOCK = "AccumulationRegister_ТоварыНаСкладах"
ORDER_BALANCES = "AccumulationRegister_ЗаказыНаПеремещение"
FREE_STOCK_114 = "AccumulationRegister_СвободныеОстатки"
ORDER = "Document_ЗаказНаПеремещение"
ORDER_LINES = "Document_ЗаказНаПеремещение_Товары"

GROUP_114 = "Группировка_Key"
GROUP_115 = "ГруппировкаТоварныхОграничений_Key"
#: ``ВариантОбеспечения`` of every line the hub writes, the same name on 11.4 and 11.5. Only
#: ``Отгрузить`` lines get ``КОформлению`` in ``РегистрНакопления.ЗаказыНаПеремещение`` (what the
#: next run reads as incoming) and plan the shipment at the sender, with UT's free-stock control
#: (reference, Corrections 1). ``КОбеспечению``/``Требуется`` lines record neither: a later run
#: would order the same deficit again. Not a setting: no other option keeps that count.
SUPPLY = "Отгрузить"
SUPPLY_ENUM = "ВариантыОбеспечения"

_KIND = {
    "Catalog": "Справочник",
    "Document": "Документ",
    "InformationRegister": "РегистрСведений",
    "AccumulationRegister": "РегистрНакопления",
}


@dataclass(slots=True)
class ServiceMetadata:
    """The parts of ``$metadata`` the hub looks at."""

    entity_sets: dict[str, str] = field(default_factory=dict)  # set → entity type (no namespace)
    properties: dict[str, frozenset[str]] = field(default_factory=dict)  # kept types only
    functions: set[tuple[str, str]] = field(default_factory=set)  # (function, bound type)
    enums: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _short(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


def parse_metadata(body: bytes, keep: Collection[str]) -> ServiceMetadata:
    """Stream-parse an EDMX document, keeping properties only of the types named in ``keep``
    (entity or complex types) and members of every enum type."""
    meta = ServiceMetadata()
    wanted = set(keep)
    current_props: list[str] | None = None
    current_enum: list[str] | None = None
    function: str | None = None
    try:
        for event, element in ElementTree.iterparse(io.BytesIO(body), events=("start", "end")):
            tag = _local(element.tag)
            if event == "start":
                if tag in ("EntityType", "ComplexType"):
                    current_props = [] if element.get("Name") in wanted else None
                elif tag == "EnumType":
                    current_enum = []
                elif tag == "FunctionImport":
                    function = element.get("Name")
                continue
            if tag == "Property" and current_props is not None:
                current_props.append(element.get("Name", ""))
            elif tag in ("EntityType", "ComplexType"):
                if current_props is not None:
                    meta.properties[element.get("Name", "")] = frozenset(current_props)
                current_props = None
                element.clear()
            elif tag == "Member" and current_enum is not None:
                current_enum.append(element.get("Name", ""))
            elif tag == "EnumType":
                meta.enums[element.get("Name", "")] = tuple(current_enum or ())
                current_enum = None
                element.clear()
            elif tag == "EntitySet":
                meta.entity_sets[element.get("Name", "")] = _short(element.get("EntityType", ""))
            elif tag == "Parameter" and function and element.get("Name") == "bindingParameter":
                meta.functions.add((function, _short(element.get("Type", ""))))
            elif tag == "FunctionImport":
                function = None
                element.clear()
    except ElementTree.ParseError as exc:
        raise PermanentError(
            f"1C $metadata is not valid XML: {exc}", system="1c", code="metadata"
        ) from exc
    if not meta.entity_sets:
        raise PermanentError(
            "1C publishes no entity sets at all: the OData composition is empty "
            "(Администрирование → Настройки стандартного интерфейса OData → Состав)",
            system="1c",
        )
    return meta


@dataclass(frozen=True, slots=True)
class OneCSchema:
    """The UT dialect the connector speaks, decided once from ``$metadata``."""

    version: str  # "11.4" or "11.5"
    detected: bool  # False when forced by settings.ut_version
    group_field: str
    supply_option: str
    has_priority: bool
    order_fields: frozenset[str]
    line_fields: frozenset[str]

    def describe(self) -> str:
        how = "detected from $metadata" if self.detected else "forced by onec.ut_version"
        return f"UT {self.version} ({how})"


def types_to_keep() -> list[str]:
    return [
        WAREHOUSES,
        ORGANIZATIONS,
        PRIORITIES,
        ITEMS,
        PACKAGES,
        NORMS,
        ORDER,
        ORDER_LINES,
        STOCK + "_Balance",
        ORDER_BALANCES + "_Balance",
    ]


def _props(meta: ServiceMetadata, set_name: str) -> frozenset[str]:
    return meta.properties.get(meta.entity_sets.get(set_name, set_name), frozenset())


def detect_schema(meta: ServiceMetadata, forced: str) -> OneCSchema:
    """Pick the dialect: ``forced`` ("11.4"/"11.5") wins; "auto" reads the signals."""
    norm_props = _props(meta, NORMS)
    if forced in ("11.4", "11.5"):
        version, detected = forced, False
    elif GROUP_114 in norm_props:
        version, detected = "11.4", True
    elif GROUP_115 in norm_props:
        version, detected = "11.5", True
    else:
        version, detected = ("11.4" if FREE_STOCK_114 in meta.entity_sets else "11.5"), True
    order_fields = _props(meta, ORDER)
    return OneCSchema(
        version=version,
        detected=detected,
        group_field=GROUP_114 if version == "11.4" else GROUP_115,
        supply_option=SUPPLY,
        has_priority="Приоритет_Key" in order_fields if order_fields else version == "11.5",
        order_fields=order_fields,
        line_fields=_props(meta, ORDER_LINES),
    )


def _requirements(schema: OneCSchema) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(entity set, properties the hub reads or writes, bound functions it calls)."""
    required = [
        (WAREHOUSES, ("Ref_Key", "Description", "IsFolder", "DeletionMark"), ()),
        (ORGANIZATIONS, ("Ref_Key", "Description", "DeletionMark"), ()),
        (ITEMS, ("Ref_Key", "Code", "Description", "Артикул", "IsFolder", "DeletionMark"), ()),
        (PACKAGES, ("Ref_Key", "Числитель", "Знаменатель"), ()),
        (
            NORMS,
            (
                "Склад_Key",
                "Номенклатура_Key",
                "Характеристика_Key",
                schema.group_field,
                "МинимальноеКоличествоЗапаса",
                "МаксимальноеКоличествоЗапаса",
                "МетодОбеспеченияПотребностей",
                "УпаковкаЗаказа_Key",
                "ЭтоДействующийПараметр",
            ),
            (),
        ),
        (STOCK, (), ("Balance",)),
        (ORDER_BALANCES, (), ("Balance",)),
        (
            ORDER,
            (
                "Ref_Key",
                "Number",
                "Date",
                "Posted",
                "DeletionMark",
                "Организация_Key",
                "СкладОтправитель_Key",
                "СкладПолучатель_Key",
                "Статус",
                "ХозяйственнаяОперация",
                "ЖелаемаяДатаПоступления",
                "Комментарий",
            ),
            ("Post",),
        ),
        (
            ORDER_LINES,
            (
                "LineNumber",
                "Номенклатура_Key",
                "Упаковка_Key",
                "КоличествоУпаковок",
                "Количество",
                "ВариантОбеспечения",
            ),
            (),
        ),
    ]
    if schema.has_priority:
        required.append((PRIORITIES, ("Ref_Key", "Description", "DeletionMark"), ()))
    return required


_BALANCE_FIELDS = {
    STOCK: ("Номенклатура_Key", "Склад_Key", "ВНаличииBalance", "КОтгрузкеBalance"),
    ORDER_BALANCES: ("ЗаказНаПеремещение_Key", "Номенклатура_Key", "КОформлениюBalance"),
}


def metadata_object(set_name: str) -> str:
    """``Catalog_Приоритеты`` → ``Справочник.Приоритеты`` (the name an administrator sees)."""
    kind, _, rest = set_name.partition("_")
    if set_name == ORDER_LINES:
        return "Документ.ЗаказНаПеремещение (табличная часть Товары)"
    return f"{_KIND.get(kind, kind)}.{rest}"


def missing_objects(meta: ServiceMetadata, schema: OneCSchema) -> tuple[list[str], list[str]]:
    """(unpublished entity sets, ``Set.Property`` / ``Set/Function`` that are absent)."""
    unpublished: list[str] = []
    absent: list[str] = []
    for set_name, props, functions in _requirements(schema):
        if set_name not in meta.entity_sets:
            unpublished.append(set_name)
            continue
        have = _props(meta, set_name)
        absent += [f"{set_name}.{p}" for p in props if p not in have]
        bound = meta.entity_sets[set_name]
        absent += [f"{set_name}/{f}" for f in functions if (f, bound) not in meta.functions]
        if set_name in _BALANCE_FIELDS:
            result = meta.properties.get(set_name + "_Balance")
            if result is not None:
                absent += [
                    f"{set_name}/Balance.{p}" for p in _BALANCE_FIELDS[set_name] if p not in result
                ]
    members = meta.enums.get(SUPPLY_ENUM)
    if members is not None and SUPPLY not in members:
        # Every line carries it; a base without it would refuse or misread every order.
        absent.append(f"{SUPPLY_ENUM}.{SUPPLY}")
    return unpublished, absent


def verify_published(meta: ServiceMetadata, schema: OneCSchema) -> None:
    """PermanentError naming exactly what the administrator must publish (or what is odd)."""
    unpublished, absent = missing_objects(meta, schema)
    if not unpublished and not absent:
        return
    parts = []
    if unpublished:
        listed = ", ".join(f"{metadata_object(s)} ({s})" for s in unpublished)
        parts.append(
            "the 1C administrator must add these objects to the OData composition "
            "(Администрирование → Настройки стандартного интерфейса OData → Состав): " + listed
        )
    if absent:
        hint = (
            '; onec.ut_version is forced — try "auto"'
            if not schema.detected
            else "; is this a modified configuration?"
        )
        parts.append(
            f"published objects lack what the hub uses for {schema.describe()}: "
            + ", ".join(absent)
            + hint
        )
    raise PermanentError(
        "1C OData publication is incomplete: " + "; ".join(parts),
        system="1c",
        code="composition",
    )
