"""«Заказ на перемещение»: deliver one idempotently, and read what the hub's open ones still owe.

Delivery (reference §3.5–3.7, §4 pitfalls 8–11):

1. with ``look_up_first`` (the previous attempt's outcome is unknown) the order is looked up by
   its client-chosen ``Ref_Key``, then by the idempotency key in ``Комментарий``;
2. if absent it is created with every required field explicit and ``LineNumber`` on every line.
   A lost answer (timeout, dropped connection, 5xx without ``odata.error``) is
   ``OutcomeUnknownError``. A refusal is checked against a lookup once — an order already
   there (same ``Ref_Key``) is used, not duplicated;
3. an unposted order is posted (``/Post?PostingModeOperational=false``), then re-read and compared
   with what was sent (1C silently accepts and stores surprising things). Any transient failure
   after the order exists is reported as ``OutcomeUnknownError`` so the retry looks it up first.

Outstanding quantities (``read_open_transfers``) come from the balance of
``AccumulationRegister_ЗаказыНаПеремещение``, resource ``КОформлению`` — what the order still
expects to be formalised by a transfer — over the hub's own posted, open, not deleted orders
to the receivers (marker ``bisnesmedia-hub`` in ``Комментарий``), per sender, receiver and
item. A closed order (``Статус = Закрыт``) is left out even if a balance remained.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import structlog

from daemon.errors import OutcomeUnknownError, PermanentError, TransientError
from daemon.model import EMPTY_GUID, DeliveredDocument, TransferOrderDocument
from daemon.onec import odata
from daemon.onec.metadata import ORDER, ORDER_BALANCES, ORDER_LINES, OneCSchema
from daemon.onec.norms import decimal
from daemon.onec.transport import SYSTEM, ODataTransport, rows_of, task_group
from daemon.ports import OpenTransferLine

log = structlog.get_logger(__name__)

HUB_MARKER = "bisnesmedia-hub"


@dataclass(frozen=True, slots=True)
class OrderContext:
    """Header values the document itself does not carry."""

    organization: tuple[str, str]  # (Ref_Key, Description)
    priority: tuple[str, str] | None


def order_body(doc: TransferOrderDocument, schema: OneCSchema, ctx: OrderContext) -> dict[str, Any]:
    """The POST body: every field UT's check-filling wants, sent explicitly (reference §2.4) —
    ``ОбработкаЗаполнения`` may not run under OData, so nothing is left to defaults."""
    start = odata.date_text(doc.date)
    lines = [
        {
            "LineNumber": number,
            "Номенклатура_Key": line.item_key,
            "Характеристика_Key": EMPTY_GUID,
            "Упаковка_Key": line.package_key or EMPTY_GUID,
            "КоличествоУпаковок": odata.json_number(line.packages),
            "Количество": odata.json_number(line.quantity),
            "ВариантОбеспечения": schema.supply_option,
            "НачалоОтгрузки": start,
            "Отменено": False,
        }
        for number, line in enumerate(doc.lines, start=1)
    ]
    header: dict[str, Any] = {
        "Ref_Key": doc.ref_key,
        "Date": start,
        "Организация_Key": ctx.organization[0],
        "СкладОтправитель_Key": doc.sender_key,
        "СкладПолучатель_Key": doc.receiver_key,
        "ХозяйственнаяОперация": "ПеремещениеТоваров",
        "Статус": "КВыполнению",
        "ЖелаемаяДатаПоступления": odata.date_text(doc.desired_arrival),
        "СпособДоставки": "Самовывоз",
        "ВариантПриемкиТоваров": "РазделенаПоЗаказамИНакладным",
        "Комментарий": doc.comment,
    }
    if schema.has_priority and ctx.priority:
        header["Приоритет_Key"] = ctx.priority[0]
    # Only what this base publishes: 1C would ignore the rest silently anyway.
    header = {k: v for k, v in header.items() if k in schema.order_fields}
    header["Товары"] = [
        {k: v for k, v in line.items() if k in schema.line_fields or k == "LineNumber"}
        for line in lines
    ]
    return header


def _entity_url(transport: ODataTransport, ref_key: str, action: str = "") -> str:
    path = f"{ORDER}({odata.guid(ref_key)})" + (f"/{action}" if action else "")
    params = [("$format", "json")]
    if action == "Post":
        params.append(("PostingModeOperational", "false"))
    return transport.url(path, params)


def _marked(comment: str, doc: TransferOrderDocument) -> bool:
    return comment.strip() == doc.comment.strip() or f"key={doc.idempotency_key}" in comment.split()


async def find_order(
    transport: ODataTransport, doc: TransferOrderDocument
) -> dict[str, Any] | None:
    """The order this document became, if it exists: by Ref_Key, else by the marker."""
    try:
        row: dict[str, Any] = await transport.get_json(
            _entity_url(transport, doc.ref_key), what="transfer order lookup"
        )
        return row
    except PermanentError as exc:
        if exc.status != 404:
            raise
    where = odata.all_of(
        f"Date ge {odata.datetime_literal(doc.date - timedelta(days=1))}",
        odata.substringof(doc.idempotency_key, "Комментарий"),
    )
    rows = await transport.get_all(
        ORDER,
        where=where,
        select=("Ref_Key", "Number", "Posted", "DeletionMark", "Комментарий"),
        orderby=("Ref_Key",),
        what="transfer order lookup by marker",
    )
    matches: list[dict[str, Any]] = [r for r in rows if _marked(r.get("Комментарий") or "", doc)]
    if not matches:
        return None
    if len(matches) > 1:
        log.warning(
            "onec_transfer_duplicates",
            idempotency_key=doc.idempotency_key,
            ref_keys=[r["Ref_Key"] for r in matches],
        )
    matches.sort(key=lambda r: (bool(r.get("DeletionMark")), not r.get("Posted")))
    return matches[0]


async def deliver(
    transport: ODataTransport,
    schema: OneCSchema,
    ctx: OrderContext,
    doc: TransferOrderDocument,
    *,
    look_up_first: bool,
) -> DeliveredDocument:
    """Create (if absent), post (if unposted) and verify one transfer order."""
    found = await find_order(transport, doc) if look_up_first else None
    created_now = False
    if found is None:
        try:
            _, body, _ = await transport.send(
                "POST",
                transport.url(ORDER, [("$format", "json")]),
                order_body(doc, schema, ctx),
                what="transfer order create",
            )
        except PermanentError:
            # A refusal may be 1C saying the Ref_Key is taken: an earlier attempt got through.
            found = await find_order(transport, doc)
            if found is None:
                raise
            log.info("onec_transfer_found", ref_key=found["Ref_Key"], after="refused create")
        else:
            created_now = True
            try:
                found = odata.loads(body)
            except ValueError:
                found = None
            if not isinstance(found, dict):
                # 201 without a readable body: the order exists; read it back by its key.
                found = await find_order(transport, doc)
                if found is None:
                    raise OutcomeUnknownError(
                        "1C answered the create with 201 but the order cannot be found",
                        system=SYSTEM,
                        status=201,
                    )
            log.info(
                "onec_transfer_created",
                ref_key=found.get("Ref_Key"),
                number=found.get("Number"),
                lines=len(doc.lines),
            )
    else:
        log.info("onec_transfer_found", ref_key=found["Ref_Key"], after="lookup")
    ref_key = str(found.get("Ref_Key") or "")
    if not odata.is_guid(ref_key):
        raise PermanentError("1C answered the create without a Ref_Key", system=SYSTEM)
    try:
        return await _post_and_verify(transport, doc, found, created_now)
    except OutcomeUnknownError:
        raise
    except TransientError as exc:
        raise OutcomeUnknownError(
            f"transfer order {ref_key} exists in 1C but posting or verifying it failed",
            system=SYSTEM,
            status=exc.status,
            code=exc.code,
            remote_message=exc.remote_message,
        ) from exc


async def _post_and_verify(
    transport: ODataTransport,
    doc: TransferOrderDocument,
    found: dict[str, Any],
    created_now: bool,
) -> DeliveredDocument:
    ref_key = found["Ref_Key"]
    label = f"transfer order {found.get('Number') or ref_key}"
    if found.get("DeletionMark"):
        raise PermanentError(
            f"{label} is marked for deletion in 1C; the hub will neither post nor recreate it",
            system=SYSTEM,
            code="deleted",
        )
    if not found.get("Posted"):
        await transport.send(
            "POST", _entity_url(transport, ref_key, "Post"), None, what=f"posting {label}"
        )
        log.info("onec_transfer_posted", ref_key=ref_key)
    row = await transport.get_json(_entity_url(transport, ref_key), what=f"re-reading {label}")
    lines = row.get("Товары")
    if not isinstance(lines, list):
        where = odata.eq("Ref_Key", odata.guid(ref_key))
        relative = transport.url(ORDER_LINES, [("$format", "json"), ("$filter", where)])
        lines = rows_of(await transport.get_json(relative, what=f"lines of {label}"), "lines")
    problems = _differences(doc, row, lines)
    if problems:
        raise PermanentError(
            f"{label} in 1C differs from what the hub sent: " + "; ".join(problems),
            system=SYSTEM,
            code="verify",
        )
    return DeliveredDocument(
        external_id=ref_key, number=str(row.get("Number") or ""), created_now=created_now
    )


def _differences(doc: TransferOrderDocument, row: dict[str, Any], lines: list[Any]) -> list[str]:
    problems = []
    if row.get("Posted") is not True:
        problems.append("it is not posted")
    if row.get("DeletionMark"):
        problems.append("it is marked for deletion")
    for field, wanted in (
        ("СкладОтправитель_Key", doc.sender_key),
        ("СкладПолучатель_Key", doc.receiver_key),
    ):
        if str(row.get(field, "")).lower() != wanted.lower():
            problems.append(f"{field} is {row.get(field)} instead of {wanted}")
    sent: dict[str, tuple[Decimal, Decimal]] = {}
    for line in doc.lines:
        quantity, packages = sent.get(line.item_key, (Decimal(0), Decimal(0)))
        sent[line.item_key] = (quantity + line.quantity, packages + line.packages)
    stored: dict[str, tuple[Decimal, Decimal]] = {}
    for line in lines:
        key = str(line.get("Номенклатура_Key", "")).lower()
        quantity, packages = stored.get(key, (Decimal(0), Decimal(0)))
        stored[key] = (
            quantity + decimal(line.get("Количество")),
            packages + decimal(line.get("КоличествоУпаковок")),
        )
    for item_key, (quantity, packages) in sent.items():
        got = stored.pop(item_key.lower(), None)
        if got is None:
            problems.append(f"item {item_key} is missing")
        elif got != (quantity, packages):
            problems.append(
                f"item {item_key}: {got[0]} ({got[1]} packages) instead of {quantity} ({packages})"
            )
    problems += [f"unexpected item {key}" for key in stored]
    return problems


async def read_open_transfers(
    transport: ODataTransport, receiver_keys: Sequence[str], *, max_url_bytes: int
) -> list[OpenTransferLine]:
    """What the hub's open transfer orders to the receivers still owe, per sender and item."""
    if not receiver_keys:
        return []
    where = odata.all_of(
        odata.any_of("СкладПолучатель_Key", [odata.guid(k) for k in receiver_keys]),
        "Posted eq true",
        "DeletionMark eq false",
        f"Статус ne {odata.literal('Закрыт')}",
        odata.substringof(HUB_MARKER, "Комментарий"),
    )
    orders = await transport.get_all(
        ORDER,
        where=where,
        select=("Ref_Key", "Комментарий", "СкладОтправитель_Key", "СкладПолучатель_Key"),
        orderby=("Ref_Key",),
        what="open hub transfer orders",
    )
    route = {
        str(o["Ref_Key"]).lower(): (str(o["СкладОтправитель_Key"]), str(o["СкладПолучатель_Key"]))
        for o in orders
        if HUB_MARKER in (o.get("Комментарий") or "")
    }
    keys = [odata.guid(key) for key in route]
    if not keys:
        return []

    def render(run: Sequence[str]) -> str:
        condition = " or ".join(odata.eq("ЗаказНаПеремещение_Key", key) for key in run)
        path = f"{ORDER_BALANCES}/" + odata.call(
            "Balance", Condition=condition, Dimensions="ЗаказНаПеремещение,Номенклатура"
        )
        select = "ЗаказНаПеремещение_Key,Номенклатура_Key,КОформлениюBalance"
        return odata.relative_url(path, [("$format", "json"), ("$select", select)])

    tasks: list[asyncio.Task[Any]] = []
    async with task_group() as group:
        for run in odata.batches(keys, render, max_url_bytes):
            relative = transport.checked(render(run))
            tasks.append(group.create_task(transport.get_json(relative, what="transfer balances")))
    outstanding: dict[tuple[str, str, str], Decimal] = {}
    for task in tasks:
        for row in rows_of(task.result(), "transfer balances"):
            amount = decimal(row.get("КОформлениюBalance"))
            sender_receiver = route.get(str(row.get("ЗаказНаПеремещение_Key", "")).lower())
            if amount > 0 and sender_receiver is not None:
                key = (*sender_receiver, str(row["Номенклатура_Key"]))
                outstanding[key] = outstanding.get(key, Decimal(0)) + amount
    log.info("onec_read", what="open_transfers", orders=len(keys), lines=len(outstanding))
    return [
        OpenTransferLine(sender, receiver, item, qty)
        for (sender, receiver, item), qty in sorted(outstanding.items())
    ]
