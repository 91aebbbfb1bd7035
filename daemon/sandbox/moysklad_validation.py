"""Validating what clients send to the МойСклад emulator: meta references and positions.

Mirrors the API's checks: ``meta`` needs ``href`` (2010) and ``type`` (2011) of a known type
(2012); the href must be well formed (2013), on the server the client called (1059 otherwise)
and of the type the field takes (2024); the entity must exist (1021). Positions need an
assortment and a quantity > 0 (3000/3003); reserve ≤ quantity (17003); vat and discount ≤ 100
(17007/17008); more than 1000 in one array is 413.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from yarl import URL

from daemon.sandbox.moysklad_wire import PREFIX, ApiError, Ids, minute_timestamp, now_msk

MAX_ARRAY = 1000

ASSORTMENT_TYPES = frozenset({"product", "variant", "service", "bundle", "consignment"})
KNOWN_TYPES = frozenset(
    {
        *ASSORTMENT_TYPES,
        "organization",
        "counterparty",
        "store",
        "state",
        "employee",
        "group",
        "currency",
        "customerorder",
        "customerorderposition",
        "project",
        "contract",
        "saleschannel",
        "account",
    }
)

MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,3})?$")

Exists = Callable[[str, str], bool]


@dataclass
class Position:
    id: str
    assortment_type: str
    assortment_id: str
    quantity: float
    price: float = 0.0
    discount: float = 0.0
    vat: int = 0
    reserve: float = 0.0
    shipped: float = 0.0


def field_error(status: int, code: int, message: str, parameter: str) -> ApiError:
    return ApiError(status, code, message, parameter=parameter)


class RequestContext:
    """What order validation needs to know about the request and the account."""

    def __init__(self, base: str, exists: Exists) -> None:
        self.base = base
        base_url = URL(base)
        self.host = base_url.host
        self.port = base_url.port
        self.exists = exists

    def reference(self, value: Any, parameter: str, allowed: frozenset[str]) -> tuple[str, str]:
        """(type, id) of a ``{"meta": {...}}`` reference, validated like the API does."""
        if not isinstance(value, dict) or not isinstance(value.get("meta"), dict):
            raise field_error(400, 2010, f"Не указаны метаданные поля '{parameter}'", parameter)
        entity_meta = value["meta"]
        href = entity_meta.get("href")
        kind = entity_meta.get("type")
        if not isinstance(href, str) or not href:
            raise field_error(400, 2010, f"Не указан 'href' в метаданных '{parameter}'", parameter)
        if not isinstance(kind, str) or not kind:
            raise field_error(400, 2011, f"Не указан 'type' в метаданных '{parameter}'", parameter)
        if kind not in KNOWN_TYPES:
            raise field_error(400, 2012, f"Неизвестный тип '{kind}' в '{parameter}'", parameter)
        try:
            url = URL(href)
        except ValueError as exc:
            raise field_error(400, 2013, f"Неверный href '{href}'", parameter) from exc
        if not url.is_absolute() or PREFIX not in url.path:
            raise field_error(400, 2013, f"Неверный href '{href}'", parameter)
        if url.host != self.host or url.port != self.port:
            raise field_error(
                400,
                1059,
                f"Ссылка '{href}' указывает на сторонний сервер",
                parameter,
            )
        parts = url.path.split(PREFIX, 1)[1].strip("/").split("/")
        entity_id = parts[-1]
        href_type = "state" if parts[-2:-1] == ["states"] else parts[1] if len(parts) > 2 else ""
        if href_type != kind or kind not in allowed:
            raise field_error(
                400,
                2024,
                f"Поле '{parameter}': ссылка на объект неверного типа '{kind}'",
                parameter,
            )
        try:
            uuid.UUID(entity_id)
        except ValueError as exc:
            raise field_error(400, 2013, f"Неверный идентификатор в '{href}'", parameter) from exc
        if not self.exists(kind, entity_id):
            raise field_error(
                412, 1021, f"Объект с типом '{kind}' и UUID {entity_id} не найден", parameter
            )
        return kind, entity_id


def number(value: Any, parameter: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise field_error(400, 2016, f"Неверный тип значения поля '{parameter}'", parameter)
    return float(value)


def parse_moment(value: Any) -> str:
    if value is None:
        return minute_timestamp(now_msk())
    if not isinstance(value, str) or not MOMENT.match(value):
        raise field_error(400, 2016, "Неверный формат даты в поле 'moment'", "moment")
    return minute_timestamp(datetime.strptime(value[:19], "%Y-%m-%d %H:%M:%S"))


def parse_description(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    if len(text) > 4096:
        raise field_error(
            412, 3008, "Длина поля 'description' превышает 4096 символов", "description"
        )
    return text


def parse_positions(
    value: Any, ctx: RequestContext, ids: Ids, keep: list[Position] | None = None
) -> list[Position]:
    if not isinstance(value, list):
        raise field_error(400, 2016, "Поле 'positions' должно быть массивом", "positions")
    if len(value) > MAX_ARRAY:
        raise field_error(
            413,
            2022,
            f"Коллекция 'positions' содержит больше {MAX_ARRAY} элементов",
            "positions",
        )
    existing = {position.id: position for position in keep or []}
    result = []
    for index, raw in enumerate(value):
        where = f"positions[{index}]"
        if not isinstance(raw, dict):
            raise field_error(400, 2016, f"Элемент '{where}' должен быть объектом", where)
        if raw.get("assortment") is None:
            raise field_error(
                412,
                3000,
                "Ошибка сохранения объекта: поле 'assortment' не может быть пустым "
                "или отсутствовать",
                f"{where}.assortment",
            )
        kind, entity_id = ctx.reference(raw["assortment"], f"{where}.assortment", ASSORTMENT_TYPES)
        if raw.get("quantity") is None:
            raise field_error(
                412,
                3000,
                "Ошибка сохранения объекта: поле 'quantity' не может быть пустым или отсутствовать",
                f"{where}.quantity",
            )
        quantity = number(raw["quantity"], f"{where}.quantity")
        if quantity <= 0:
            raise field_error(
                412, 3003, "Значение поля 'quantity' должно быть больше 0", f"{where}.quantity"
            )
        price = number(raw.get("price", 0), f"{where}.price")
        if price < 0:
            raise field_error(
                412, 3003, "Значение поля 'price' не может быть отрицательным", f"{where}.price"
            )
        discount = number(raw.get("discount", 0), f"{where}.discount")
        if discount > 100:
            raise field_error(412, 17008, "Скидка не может быть больше 100%", f"{where}.discount")
        vat = number(raw.get("vat", 0), f"{where}.vat")
        if vat > 100 or vat < 0:
            raise field_error(412, 17007, "НДС не может быть больше 100%", f"{where}.vat")
        reserve = number(raw.get("reserve", 0), f"{where}.reserve")
        if reserve > quantity:
            raise field_error(
                412,
                17003,
                "Резерв не может превышать количество товара в позиции",
                f"{where}.reserve",
            )
        old = existing.get(str(raw.get("id", "")))
        result.append(
            Position(
                id=old.id if old else ids.new_id(),
                assortment_type=kind,
                assortment_id=entity_id,
                quantity=quantity,
                price=price,
                discount=discount,
                vat=int(vat),
                reserve=reserve,
                shipped=min(old.shipped, quantity) if old else 0.0,
            )
        )
    return result
