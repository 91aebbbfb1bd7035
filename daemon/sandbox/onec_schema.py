"""The slice of a UT 11 OData publication the emulator serves, and its ``$metadata`` document.

Entity and property names follow reference §2 (taken from real UT 11.4/11.5 configuration dumps).
The differences between the two versions that matter to the hub are switched by ``version``:
the norm register's group dimension, the ``ВариантыОбеспечения`` value names, ``Приоритет_Key``
on the transfer order, and the 11.4-only ``AccumulationRegister_СвободныеОстатки``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

G, S, B, D, I64, DT = (
    "Edm.Guid",
    "Edm.String",
    "Edm.Boolean",
    "Edm.Double",
    "Edm.Int64",
    "Edm.DateTime",
)

CATALOG_HEAD = (
    ("Ref_Key", G),
    ("DataVersion", S),
    ("DeletionMark", B),
)
PREDEFINED = (("Predefined", B), ("PredefinedDataName", S))


@dataclass(frozen=True, slots=True)
class Dimension:
    """A register dimension: its name in ``Dimensions=`` and its property name in rows."""

    name: str
    prop: str
    edm: str = G


@dataclass(frozen=True, slots=True)
class EntityDef:
    name: str
    properties: tuple[tuple[str, str], ...]
    keys: tuple[str, ...] = ("Ref_Key",)
    actions: tuple[str, ...] = ()  # bindable FunctionImports: "Post", "Unpost", "Balance", …
    dimensions: tuple[Dimension, ...] = ()  # accumulation registers
    resources: tuple[str, ...] = ()  # accumulation registers

    @property
    def property_names(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.properties)

    def edm_type(self, prop: str) -> str | None:
        for name, edm in self.properties:
            if name == prop:
                return edm
        return None


ENUMS_COMMON: dict[str, tuple[str, ...]] = {
    "МетодыОбеспеченияПотребностей": (
        "ЗаказПодЗаказ",
        "ПоддержаниеЗапасаМинМакс",
        "ПоддержаниеЗапасаНаСрокПоНорме",
        "ПоддержаниеЗапасаНаСрокПоСтатистике",
    ),
    "ХозяйственныеОперации": (
        "ПеремещениеТоваров",
        "ПеремещениеТоваровМеждуФилиалами",
        "РеализацияКлиенту",
        "ЗакупкаУПоставщика",
    ),
    "СпособыДоставки": ("Самовывоз", "ДоКлиента", "СиламиПеревозчика"),
    "ВариантыПриемкиТоваров": ("РазделенаПоЗаказамИНакладным", "НеРазделенаПоЗаказамИНакладным"),
    "ТипыСкладов": ("ОптовыйСклад", "РозничныйМагазин"),
    "ОбеспечениеЗаказовПриПоддержанииЗапаса": ("ЗаСчетЗапасов", "НезависимоОтЗапасов"),
}
ENUMS_BY_VERSION: dict[str, dict[str, tuple[str, ...]]] = {
    "11.5": {
        "ВариантыОбеспечения": (
            "Отгрузить",
            "СоСклада",
            "РезервироватьПоМереПоступления",
            "КОбеспечению",
            "НеТребуется",
            "ПереданРанее",
        ),
        "СтатусыВнутреннихЗаказов": (
            "УдалитьКОбеспечению",
            "НаСогласовании",
            "КВыполнению",
            "Закрыт",
        ),
    },
    "11.4": {
        "ВариантыОбеспечения": (
            "ОтгрузитьОбособленно",
            "Отгрузить",
            "СоСклада",
            "ИзЗаказов",
            "Обособленно",
            "Требуется",
            "НеТребуется",
        ),
        "СтатусыВнутреннихЗаказов": ("КОбеспечению", "КВыполнению", "Закрыт"),
    },
}


def group_dimension(version: str) -> str:
    return "Группировка_Key" if version == "11.4" else "ГруппировкаТоварныхОграничений_Key"


def enums(version: str) -> dict[str, tuple[str, ...]]:
    return {**ENUMS_COMMON, **ENUMS_BY_VERSION[version]}


STOCK = "AccumulationRegister_ТоварыНаСкладах"
FREE_STOCK_114 = "AccumulationRegister_СвободныеОстатки"
TRANSFER_ORDERS = "AccumulationRegister_ЗаказыНаПеремещение"
NORMS = "InformationRegister_ТоварныеОграничения"
ORDER = "Document_ЗаказНаПеремещение"
ORDER_LINES = "Document_ЗаказНаПеремещение_Товары"
WAREHOUSES = "Catalog_Склады"
ITEMS = "Catalog_Номенклатура"
PACKAGES = "Catalog_УпаковкиЕдиницыИзмерения"


def _catalog(name: str, *fields: tuple[str, str]) -> EntityDef:
    return EntityDef(name, (*CATALOG_HEAD, *fields, *PREDEFINED))


def _register(name: str, dims: tuple[Dimension, ...], resources: tuple[str, ...]) -> EntityDef:
    # The set itself is the recorder-keyed record set; the hub only ever calls its Balance.
    return EntityDef(
        name,
        (("Recorder", S), ("Recorder_Type", S)),
        keys=("Recorder", "Recorder_Type"),
        actions=("Balance", "Turnovers", "BalanceAndTurnovers"),
        dimensions=dims,
        resources=resources,
    )


def entity_defs(version: str) -> dict[str, EntityDef]:
    """Every entity set of the emulated publication, by name."""
    group = group_dimension(version)
    order_props: tuple[tuple[str, str], ...] = (
        ("Ref_Key", G),
        ("DataVersion", S),
        ("DeletionMark", B),
        ("Number", S),
        ("Date", DT),
        ("Posted", B),
        ("Организация_Key", G),
        ("ОрганизацияПолучатель_Key", G),
        ("СкладОтправитель_Key", G),
        ("СкладПолучатель_Key", G),
        ("Статус", S),
        ("ХозяйственнаяОперация", S),
        ("ЖелаемаяДатаПоступления", DT),
        ("Комментарий", S),
        ("Ответственный_Key", G),
        ("Автор_Key", G),
        ("Подразделение_Key", G),
        ("СпособДоставки", S),
        ("ВариантПриемкиТоваров", S),
        ("МаксимальныйКодСтроки", I64),
    )
    line_props: tuple[tuple[str, str], ...] = (
        ("Ref_Key", G),
        ("LineNumber", I64),
        ("Номенклатура_Key", G),
        ("Характеристика_Key", G),
        ("Упаковка_Key", G),
        ("КоличествоУпаковок", D),
        ("Количество", D),
        ("ВариантОбеспечения", S),
        ("НачалоОтгрузки", DT),
        ("ОкончаниеПоступления", DT),
        ("Отменено", B),
        ("КодСтроки", I64),
        ("Назначение_Key", G),
        ("Серия_Key", G),
    )
    if version == "11.5":
        order_props += (("Приоритет_Key", G),)
        line_props += (("Обособленно", B),)
    order_props += (("Товары", f"Collection(StandardODATA.{ORDER_LINES}_RowType)"),)

    defs = [
        _catalog(
            WAREHOUSES,
            ("Parent_Key", G),
            ("IsFolder", B),
            ("Description", S),
            ("ТипСклада", S),
            ("Подразделение_Key", G),
            ("КонтролироватьСвободныеОстатки", B),
            ("ИспользоватьОрдернуюСхемуПриОтгрузке", B),
        ),
        _catalog(
            "Catalog_Организации",
            ("Description", S),
            ("Префикс", S),
            ("ИНН", S),
            ("КПП", S),
            ("НаименованиеПолное", S),
        ),
        _catalog("Catalog_Приоритеты", ("Description", S), ("РеквизитДопУпорядочивания", I64)),
        _catalog(
            ITEMS,
            ("Parent_Key", G),
            ("IsFolder", B),
            ("Code", S),
            ("Description", S),
            ("Артикул", S),
            ("ЕдиницаИзмерения_Key", G),
            ("ВидНоменклатуры_Key", G),
            ("НаименованиеПолное", S),
            ("ТипНоменклатуры", S),
            ("ИспользованиеХарактеристик", S),
            ("ИспользоватьУпаковки", B),
        ),
        _catalog(
            PACKAGES,
            ("Owner", S),
            ("Owner_Type", S),
            ("Code", S),
            ("Description", S),
            ("ЕдиницаИзмерения_Key", G),
            ("Числитель", D),
            ("Знаменатель", D),
            ("ТипУпаковки", S),
        ),
        _catalog("Catalog_ГруппировкиТоварныхОграничений", ("Code", S), ("Description", S)),
        _catalog(
            "Catalog_ХарактеристикиНоменклатуры",
            ("Owner", S),
            ("Owner_Type", S),
            ("Description", S),
        ),
        EntityDef(
            NORMS,
            (
                ("Склад_Key", G),
                ("Номенклатура_Key", G),
                ("Характеристика_Key", G),
                (group, G),
                ("СтраховоеКоличествоЗапаса", D),
                ("МинимальноеКоличествоЗапаса", D),
                ("МаксимальноеКоличествоЗапаса", D),
                ("НормаПотребления", D),
                ("СреднедневноеПотребление", D),
                ("СреднееОтклонениеПотребления", D),
                ("МетодОбеспеченияПотребностей", S),
                ("УпаковкаЗаказа_Key", G),
                ("ОбеспечениеЗаказовПриПоддержанииЗапаса", S),
                ("РеквизитДопУпорядочивания", I64),
                ("ДатаРасчетаРекомендаций", DT),
                ("ЭтоДействующийПараметр", B),
                ("ЕстьРекомендацияПоИзменению", B),
                ("ЭтоГруппировка", B),
            ),
            keys=("Склад_Key", "Номенклатура_Key", "Характеристика_Key", group),
        ),
        _register(
            STOCK,
            (
                Dimension("Номенклатура", "Номенклатура_Key"),
                Dimension("Характеристика", "Характеристика_Key"),
                Dimension("Назначение", "Назначение_Key"),
                Dimension("Склад", "Склад_Key"),
                Dimension("Помещение", "Помещение_Key"),
                Dimension("Серия", "Серия_Key"),
            ),
            ("ВНаличии", "КОтгрузке"),
        ),
        _register(
            TRANSFER_ORDERS,
            (
                Dimension("ЗаказНаПеремещение", "ЗаказНаПеремещение_Key"),
                Dimension("Номенклатура", "Номенклатура_Key"),
                Dimension("Характеристика", "Характеристика_Key"),
                Dimension("КодСтроки", "КодСтроки", I64),
                Dimension("Серия", "Серия_Key"),
            ),
            ("Заказано", "КОформлению"),
        ),
        EntityDef(ORDER, order_props, actions=("Post", "Unpost")),
        EntityDef(ORDER_LINES, line_props, keys=("Ref_Key", "LineNumber")),
    ]
    if version == "11.4":
        defs.append(
            _register(
                FREE_STOCK_114,
                (
                    Dimension("Номенклатура", "Номенклатура_Key"),
                    Dimension("Характеристика", "Характеристика_Key"),
                    Dimension("Склад", "Склад_Key"),
                ),
                ("ВНаличии", "ВРезервеСоСклада", "ВРезервеПодЗаказ"),
            )
        )
    return {entity.name: entity for entity in defs}


# ---------------------------------------------------------------------------------------------
# $metadata
# ---------------------------------------------------------------------------------------------

_BALANCE_PARAMS = (("Condition", S), ("Dimensions", S), ("Period", DT))
_TURNOVER_PARAMS = (("Condition", S), ("Dimensions", S), ("EndPeriod", DT), ("StartPeriod", DT))


def _property(name: str, edm: str, nullable: bool) -> str:
    flag = "true" if nullable else "false"
    return f"<Property Name={quoteattr(name)} Type={quoteattr(edm)} Nullable={quoteattr(flag)}/>"


def _function(
    name: str, entity: str, returns: str | None, params: Iterable[tuple[str, str]]
) -> str:
    side_effect = "false" if returns else "true"
    head = f'<FunctionImport Name="{name}" IsBindable="true" IsSideEffecting="{side_effect}"'
    if returns:
        head += f" ReturnType={quoteattr(returns)}"
    lines = [head + ">", f'<Parameter Name="bindingParameter" Type="StandardODATA.{entity}"/>']
    lines += [f'<Parameter Name="{p}" Type="{edm}"/>' for p, edm in params]
    lines.append("</FunctionImport>")
    return "".join(lines)


def render_metadata(defs: Iterable[EntityDef], enum_types: dict[str, tuple[str, ...]]) -> bytes:
    """An EDMX (CSDL, OData 3) document shaped like the one 1C publishes."""
    types: list[str] = []
    complex_types: list[str] = []
    sets: list[str] = []
    functions: list[str] = []
    entities = list(defs)
    by_name = {entity.name: entity for entity in entities}
    for entity in entities:
        keys = "".join(f"<PropertyRef Name={quoteattr(key)}/>" for key in entity.keys)
        props = "".join(_property(n, t, n not in entity.keys) for n, t in entity.properties)
        types.append(
            f'<EntityType Name={quoteattr(entity.name)} OpenType="true">'
            f"<Key>{keys}</Key>{props}</EntityType>"
        )
        sets.append(
            f"<EntitySet Name={quoteattr(entity.name)} "
            f"EntityType={quoteattr('StandardODATA.' + entity.name)}/>"
        )
        for _, edm in entity.properties:
            if edm.startswith("Collection(StandardODATA.") and edm.endswith("_RowType)"):
                row_type = edm[len("Collection(StandardODATA.") : -1]
                rows = by_name.get(row_type.removesuffix("_RowType"))
                row_props = rows.properties if rows else ()
                fields = "".join(_property(n, t, True) for n, t in row_props if n != "Ref_Key")
                complex_types.append(
                    f"<ComplexType Name={quoteattr(row_type)}>{fields}</ComplexType>"
                )
        if entity.dimensions:
            dims = "".join(_property(d.prop, d.edm, True) for d in entity.dimensions)
            balance = "".join(_property(r + "Balance", D, True) for r in entity.resources)
            complex_types.append(
                f"<ComplexType Name={quoteattr(entity.name + '_Balance')}>{dims}{balance}"
                "</ComplexType>"
            )
            functions.append(
                _function(
                    "Balance",
                    entity.name,
                    f"Collection(StandardODATA.{entity.name}_Balance)",
                    _BALANCE_PARAMS,
                )
            )
            functions.append(
                _function(
                    "Turnovers",
                    entity.name,
                    f"Collection(StandardODATA.{entity.name}_Turnover)",
                    _TURNOVER_PARAMS,
                )
            )
        for action in ("Post", "Unpost"):
            if action in entity.actions:
                functions.append(
                    _function(action, entity.name, None, (("PostingModeOperational", B),))
                )
    enum_xml = "".join(
        f'<EnumType Name={quoteattr(name)} UnderlyingType="Edm.Int32">'
        + "".join(
            f'<Member Name={quoteattr(member)} Value="{index}"/>'
            for index, member in enumerate(members)
        )
        + "</EnumType>"
        for name, members in enum_types.items()
    )
    text = (
        "<?xml version='1.0' encoding='UTF-8'?>"
        '<edmx:Edmx xmlns:edmx="http://schemas.microsoft.com/ado/2007/06/edmx" Version="1.0">'
        '<edmx:DataServices xmlns:m="http://schemas.microsoft.com/ado/2007/08/dataservices/metadata"'
        ' m:DataServiceVersion="3.0" m:MaxDataServiceVersion="3.0">'
        '<Schema xmlns="http://schemas.microsoft.com/ado/2009/11/edm" Namespace="StandardODATA">'
        + "".join(types)
        + "".join(complex_types)
        + enum_xml
        + '<EntityContainer Name="EnterpriseV8" m:IsDefaultEntityContainer="true">'
        + "".join(sets)
        + "".join(functions)
        + "</EntityContainer></Schema></edmx:DataServices></edmx:Edmx>"
    )
    return text.encode("utf-8")
