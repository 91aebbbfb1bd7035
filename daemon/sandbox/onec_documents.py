"""«Заказ на перемещение» in the emulated base: create, patch, post, unpost, receive.

Write behaviour follows reference §1.6–1.7 and §2.4: unknown properties are ignored, a tabular
row without ``LineNumber`` is an opaque 500 code −1, a client-chosen ``Ref_Key`` is honoured and a
second create with it refused, ``Number`` is automatic (11 characters), ``КодСтроки`` is filled by
the server, ``Posted`` only changes through ``Post``/``Unpost``. An Edm.Int64 property other
than ``LineNumber`` is not written, whether the value comes as a string or a number (§1.6);
``LineNumber`` is read in both forms. Posting re-validates the order the way the UT object
module does, then records and controls what UT's manager module does
(``daemon.sandbox.onec_posting``), and answers a refusal with 500 code −1 and the reason.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from daemon.model import EMPTY_GUID
from daemon.sandbox.dataset import StockRecord
from daemon.sandbox.onec_database import ODataFault, OneCDatabase, Row
from daemon.sandbox.onec_posting import order_records, shipping_options, stock_shortages
from daemon.sandbox.onec_schema import ORDER, ORDER_LINES, TRANSFER_ORDERS, EntityDef, enums

EMPTY_DATE = "0001-01-01T00:00:00"
INTERNAL = (
    "Произошла внутренняя ошибка OData сервиса. "
    "Дополнительные сведения можно найти в технологическом журнале."
)


def _not_found() -> ODataFault:
    return ODataFault(404, "9", "Экземпляр сущности не найден")


def _refusal(message: str) -> ODataFault:
    return ODataFault(500, "-1", message)


def _convert(edm: str, value: Any) -> Any:
    """A JSON value as 1C stores it for a property of type ``edm`` (400 code 1 if unparsable)."""

    def bad() -> ODataFault:
        return ODataFault(
            400, "1", f"Не удалось разобрать строку '{value}' как значение типа {edm}!"
        )

    if edm == "Edm.Guid":
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            raise bad() from None
    if edm == "Edm.Double":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad()
        return value
    if edm == "Edm.Int64":
        return str(int(value)) if str(value).lstrip("-").isdigit() else "0"
    if edm == "Edm.DateTime":
        try:
            return datetime.fromisoformat(str(value)).replace(microsecond=0).isoformat()
        except ValueError:
            raise bad() from None
    if edm == "Edm.Boolean":
        if not isinstance(value, bool):
            raise bad()
        return value
    return "" if value is None else str(value)


def _default(edm: str) -> Any:
    return {
        "Edm.Guid": EMPTY_GUID,
        "Edm.Double": 0,
        "Edm.Int64": "0",
        "Edm.DateTime": EMPTY_DATE,
        "Edm.Boolean": False,
    }.get(edm, "")


def _apply(entity: EntityDef, target: Row, body: dict[str, Any], skip: set[str]) -> None:
    for name, edm in entity.properties:
        if name not in body or name in skip or edm.startswith("Collection("):
            continue
        if edm == "Edm.Int64" and name != "LineNumber":
            continue  # 1C does not write an Int64 sent by a client (reference §1.6)
        target[name] = _convert(edm, body[name])


class TransferOrders:
    """The document's rows live in the database's ``Document_ЗаказНаПеремещение`` table."""

    def __init__(self, db: OneCDatabase) -> None:
        self._db = db
        self._table = db.tables[ORDER]
        self._lines = db.tables[ORDER_LINES]
        self._header = db.defs[ORDER]
        self._line = db.defs[ORDER_LINES]
        self._numbers = 0
        self._supply_options = set(enums(db.version)["ВариантыОбеспечения"])
        self._shipping = shipping_options(db.version)
        self._prefix = "БМ"

    def get(self, ref_key: str) -> Row:
        row = self._table.get((ref_key,))
        if row is None:
            raise _not_found()
        return row

    def all(self) -> list[Row]:
        return list(self._table.rows)

    # -- writes ----------------------------------------------------------------------------

    def create(self, body: Any) -> Row:
        if not isinstance(body, dict):
            raise _refusal("Непредвиденный символ при чтении JSON")
        lines = self._lines_from(body.get("Товары", []))
        ref_key = _convert("Edm.Guid", body["Ref_Key"]) if "Ref_Key" in body else str(uuid.uuid4())
        if ref_key == EMPTY_GUID:
            ref_key = str(uuid.uuid4())
        if self._table.get((ref_key,)) is not None:
            raise _refusal(f"Ошибка при записи объекта: ссылка {ref_key} уже используется")
        row: Row = {name: _default(edm) for name, edm in self._header.properties}
        _apply(self._header, row, body, {"Ref_Key", "Posted", "DataVersion"})
        self._numbers += 1
        row.update(
            Ref_Key=ref_key,
            DataVersion=self._db.next_version(),
            Posted=False,
            Number=row["Number"] or f"{self._prefix}-{self._numbers:08d}",
            Date=row["Date"] if row["Date"] != EMPTY_DATE else _now(),
        )
        self._set_lines(row, lines)
        self._table.insert(row)
        return row

    def patch(self, ref_key: str, body: Any) -> Row:
        row = self.get(ref_key)
        if not isinstance(body, dict):
            raise _refusal("Непредвиденный символ при чтении JSON")
        lines = self._lines_from(body["Товары"]) if "Товары" in body else None
        _apply(self._header, row, body, {"Ref_Key", "Posted", "DataVersion"})
        if lines is not None:
            self._set_lines(row, lines)
        if row["DeletionMark"] and row["Posted"]:
            self._unpost(row)  # marking a posted document for deletion unposts it, as in 1C
        row["DataVersion"] = self._db.next_version()
        self._table.touch()
        return row

    def post(self, ref_key: str, operational: bool) -> None:
        row = self.get(ref_key)
        problems = self._check(row, operational) or stock_shortages(self._db, row, self._shipping)
        if problems:
            # A refused posting changes nothing: an order posted before keeps its movements.
            raise _refusal("\n".join(problems))
        row["Posted"] = True
        row["DataVersion"] = self._db.next_version()
        records = order_records(row, self._shipping)
        self._db.registers[TRANSFER_ORDERS].replace(row["Ref_Key"], records)
        self._table.touch()

    def unpost(self, ref_key: str) -> None:
        row = self.get(ref_key)
        self._unpost(row)
        row["DataVersion"] = self._db.next_version()
        self._table.touch()

    def set_outstanding(self, ref_key: str, item_key: str, quantity: Decimal) -> None:
        """Test hook: part of a line has been shipped and received; ``quantity`` is still to be
        formalised. The shipped part leaves the sender's ТоварыНаСкладах and reaches the
        receiver's, as the «Перемещение товаров» would move it."""
        row = self.get(ref_key)
        register = self._db.registers[TRANSFER_ORDERS]
        records = []
        for record in register.rows_of(ref_key):
            if record[1] == item_key:
                shipped = record[6] - quantity
                self._db.add_stock(StockRecord(item_key, row["СкладОтправитель_Key"], -shipped))
                self._db.add_stock(StockRecord(item_key, row["СкладПолучатель_Key"], shipped))
                record = (*record[:6], quantity)
            records.append(record)
        register.replace(ref_key, records)

    def write_off(self, ref_key: str) -> None:
        """Test hook: what the order still owed is written off unshipped, as when a manager
        closes it early: nothing stays outstanding and no goods move."""
        register = self._db.registers[TRANSFER_ORDERS]
        register.replace(ref_key, [(*r[:6], Decimal(0)) for r in register.rows_of(ref_key)])
        self._table.touch()

    def receive(self, ref_key: str) -> None:
        """Every line shipped and received: what was still outstanding moves sender → receiver
        in ТоварыНаСкладах, nothing stays outstanding, status Закрыт."""
        row = self.get(ref_key)
        register = self._db.registers[TRANSFER_ORDERS]
        records = register.rows_of(ref_key)
        if row["Posted"]:
            sender, receiver = row["СкладОтправитель_Key"], row["СкладПолучатель_Key"]
            for record in records:
                item, outstanding = record[1], record[6]
                self._db.add_stock(StockRecord(item, sender, -outstanding))
                self._db.add_stock(StockRecord(item, receiver, outstanding))
        register.replace(ref_key, [(*r[:6], Decimal(0)) for r in records])
        row["Статус"] = "Закрыт"
        row["DataVersion"] = self._db.next_version()
        self._table.touch()

    # -- helpers ---------------------------------------------------------------------------

    def _lines_from(self, raw: Any) -> list[Row]:
        if not isinstance(raw, list) or not all(isinstance(line, dict) for line in raw):
            raise _refusal("Непредвиденный символ при чтении JSON")
        lines = []
        for source in raw:
            if "LineNumber" not in source:
                # The real server fails the whole write with its generic text (reference §1.6).
                raise _refusal(INTERNAL)
            line: Row = {name: _default(edm) for name, edm in self._line.properties}
            _apply(self._line, line, source, {"Ref_Key"})
            lines.append(line)
        return lines

    def _set_lines(self, row: Row, lines: list[Row]) -> None:
        for old in row.get("Товары") or []:
            self._lines.remove((row["Ref_Key"], old["LineNumber"]))
        lines.sort(key=lambda line: int(line["LineNumber"]))
        for code, line in enumerate(lines, start=1):
            line["Ref_Key"] = row["Ref_Key"]
            line["КодСтроки"] = str(code)
            self._lines.insert(line)
        row["Товары"] = lines
        row["МаксимальныйКодСтроки"] = str(len(lines))

    def _unpost(self, row: Row) -> None:
        row["Posted"] = False
        self._db.registers[TRANSFER_ORDERS].replace(row["Ref_Key"], [])

    def _check(self, row: Row, operational: bool) -> list[str]:
        """The check-filling of the UT object module, reduced to what can go wrong here."""
        problems = []
        if row["DeletionMark"]:
            problems.append("Помеченный на удаление документ не может быть проведен")
        if operational and row["Date"][:10] != _now()[:10]:
            problems.append("Оперативное проведение документа задним числом невозможно")
        for name, label in (
            ("Организация_Key", "Организация"),
            ("СкладОтправитель_Key", "Склад-отправитель"),
            ("СкладПолучатель_Key", "Склад-получатель"),
            ("Приоритет_Key", "Приоритет"),
        ):
            if row.get(name, "-") == EMPTY_GUID:
                problems.append(f'Поле "{label}" не заполнено')
        for name, label in (("Статус", "Статус"), ("ХозяйственнаяОперация", "Хоз. операция")):
            if not row[name]:
                problems.append(f'Поле "{label}" не заполнено')
        sender, receiver = row["СкладОтправитель_Key"], row["СкладПолучатель_Key"]
        if sender != EMPTY_GUID and sender == receiver:
            problems.append("Склад-получатель должен отличаться от склада-отправителя")
        wanted = row["ЖелаемаяДатаПоступления"]
        if wanted != EMPTY_DATE and wanted[:10] < row["Date"][:10]:
            problems.append("Желаемая дата поступления не может быть меньше даты документа")
        if not row["Товары"]:
            problems.append('Не заполнена табличная часть "Товары"')
        for line in row["Товары"]:
            number = line["LineNumber"]
            if line["Номенклатура_Key"] == EMPTY_GUID:
                problems.append(f'Не заполнена колонка "Номенклатура" в строке {number}')
            for name in ("Количество", "КоличествоУпаковок"):
                if line[name] <= 0:
                    problems.append(f'Не заполнена колонка "{name}" в строке {number}')
            if line["ВариантОбеспечения"] not in self._supply_options:
                problems.append(f'Не заполнена колонка "Вариант обеспечения" в строке {number}')
            start = line["НачалоОтгрузки"]
            if start != EMPTY_DATE and start[:10] < row["Date"][:10]:
                problems.append(f"Начало отгрузки раньше даты документа в строке {number}")
        return problems


def _now() -> str:
    return datetime.now().replace(microsecond=0).isoformat()


def summary(row: Row) -> dict[str, Any]:
    """The inspection view of one order (``OneCSandbox.transfer_orders``)."""
    return {
        "Ref_Key": row["Ref_Key"],
        "Number": row["Number"],
        "Date": row["Date"],
        "Posted": row["Posted"],
        "DeletionMark": row["DeletionMark"],
        "sender": row["СкладОтправитель_Key"],
        "receiver": row["СкладПолучатель_Key"],
        "status": row["Статус"],
        "comment": row["Комментарий"],
        "raw": dict(row),
        "lines": [
            {
                "LineNumber": int(line["LineNumber"]),
                "item_key": line["Номенклатура_Key"],
                "quantity": Decimal(str(line["Количество"])),
                "packages": Decimal(str(line["КоличествоУпаковок"])),
                "package_key": line["Упаковка_Key"],
                "supply_option": line["ВариантОбеспечения"],
                "cancelled": line["Отменено"],
            }
            for line in row["Товары"]
        ],
    }
