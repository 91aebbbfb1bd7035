"""«Заказ на перемещение»: deliver one idempotently (create, post, verify).

Delivery (reference §3.5–3.7, §4 pitfalls 8–11):

1. with ``look_up_first`` (the previous attempt's outcome is unknown) the order is looked up by
   its client-chosen ``Ref_Key``, then by the idempotency key in ``Комментарий``;
2. if absent it is created with every required field explicit, ``LineNumber`` on every line (as
   a JSON string, the form 1C gives Edm.Int64) and ``ВариантОбеспечения = Отгрузить``.
   A lost answer (timeout, dropped connection, 5xx without ``odata.error``) is
   ``OutcomeUnknownError``. A refusal is checked against a lookup once — an order already
   there (same ``Ref_Key``) is used, not duplicated;
3. an unposted order is posted (``/Post?PostingModeOperational=false``), then re-read and compared
   with what was sent (1C silently accepts and stores surprising things). Any transient failure
   after the order exists is reported as ``OutcomeUnknownError`` so the retry looks it up first;
4. a posting 1C refuses (``Отгрузить`` lines are checked against the sender's free stock, so
   stock that fell since the plan is refused, naming the items) withdraws the draft: it is
   marked for deletion and the delivery fails for good with 1C's own text (``_withdraw``).

No answer is trusted for more than it can show (``daemon.onec.order_answers``): a create answer
that is not the new, unposted order with the Ref_Key sent is not believed and the order is
looked up instead; a lookup or re-read answer that cannot be read is ``OutcomeUnknownError``, so
an order that exists is never dead-lettered for a garbled answer, nor created twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import structlog

from daemon.errors import ConnectorError, OutcomeUnknownError, PermanentError, TransientError
from daemon.model import EMPTY_GUID, DeliveredDocument, TransferOrderDocument
from daemon.onec import odata
from daemon.onec.answers import SYSTEM, field_shape, malformed, row_label, text
from daemon.onec.metadata import ORDER, ORDER_LINES, OneCSchema
from daemon.onec.order_answers import (
    OrderState,
    StoredOrder,
    differences,
    order_state,
    stored_order,
)
from daemon.onec.paging import read_all
from daemon.onec.transport import ODataTransport, rows_of

log = structlog.get_logger(__name__)


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
            "LineNumber": str(number),
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


def _unknown(message: str, exc: ConnectorError) -> OutcomeUnknownError:
    """``exc`` (met once the order may exist) as the error that makes the retry look it up."""
    return OutcomeUnknownError(
        f"{message}: {exc}",
        system=SYSTEM,
        status=exc.status,
        code=exc.code,
        remote_message=exc.remote_message,
    )


async def find_order(transport: ODataTransport, doc: TransferOrderDocument) -> OrderState | None:
    """The order this document became, if it exists: by Ref_Key, else by the marker.

    None only when both lookups answer clearly that there is none; any failure, or an answer
    that cannot be read, is ``OutcomeUnknownError`` (the order may exist)."""
    try:
        return await _find(transport, doc)
    except OutcomeUnknownError:
        raise
    except ConnectorError as exc:
        raise _unknown(f"looking up transfer order {doc.ref_key} failed", exc) from exc


async def _find(transport: ODataTransport, doc: TransferOrderDocument) -> OrderState | None:
    what = "transfer order lookup"
    try:
        answer = await transport.get_json(_entity_url(transport, doc.ref_key), what=what)
    except PermanentError as exc:
        if exc.status != 404:
            raise
    else:
        state = order_state(answer)
        if isinstance(state, str):
            raise malformed(what, state)
        if state.ref_key.lower() != doc.ref_key.lower():
            raise malformed(what, f"it describes order {state.ref_key}, not {doc.ref_key}")
        return state
    what = "transfer order lookup by marker"
    where = odata.all_of(
        f"Date ge {odata.datetime_literal(doc.date - timedelta(days=1))}",
        odata.substringof(doc.idempotency_key, "Комментарий"),
    )
    rows = await read_all(
        transport,
        ORDER,
        where=where,
        select=("Ref_Key", "Number", "Posted", "DeletionMark", "Комментарий"),
        orderby=("Ref_Key",),
        what=what,
    )
    matches: list[OrderState] = []
    for row in rows:
        comment = text(row.get("Комментарий")) if isinstance(row, dict) else None
        if comment is None:
            label = row_label(row, "Ref_Key")
            raise malformed(what, f"{label}: Комментарий is {field_shape(row, 'Комментарий')}")
        if _marked(comment, doc):
            state = order_state(row)
            if isinstance(state, str):
                raise malformed(what, state)
            matches.append(state)
    if not matches:
        return None
    if len(matches) > 1:
        log.warning(
            "onec_transfer_duplicates",
            idempotency_key=doc.idempotency_key,
            ref_keys=[state.ref_key for state in matches],
        )
    matches.sort(key=lambda state: (state.deleted, not state.posted))
    return matches[0]


def _created(body: bytes, doc: TransferOrderDocument) -> OrderState | str:
    """The new order a create answer describes, or why it cannot be believed: a new order has
    the Ref_Key that was sent, is not posted yet and not marked for deletion."""
    try:
        answer = odata.loads(body)
    except (ValueError, RecursionError):
        return "the answer is not JSON"
    state = order_state(answer)
    if isinstance(state, str):
        return state
    if state.ref_key.lower() != doc.ref_key.lower():
        return f"it describes order {state.ref_key}, not the {doc.ref_key} sent"
    if state.posted or state.deleted:
        return "it says a new order is already posted or marked for deletion"
    return state


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
            status, body, _ = await transport.send(
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
            log.info("onec_transfer_found", ref_key=found.ref_key, after="refused create")
        else:
            created_now = True
            created = _created(body, doc)
            if isinstance(created, str):
                # The order exists (1C said 2xx) but the answer cannot be believed: read it.
                log.warning(
                    "onec_transfer_create_answer_unusable", ref_key=doc.ref_key, reason=created
                )
                found = await find_order(transport, doc)
                if found is None:
                    raise OutcomeUnknownError(
                        f"1C answered the create with {status} but the order cannot be found",
                        system=SYSTEM,
                        status=status,
                    )
            else:
                found = created
            log.info(
                "onec_transfer_created",
                ref_key=found.ref_key,
                number=found.number,
                lines=len(doc.lines),
            )
    else:
        log.info("onec_transfer_found", ref_key=found.ref_key, after="lookup")
    try:
        return await _post_and_verify(transport, doc, found, created_now)
    except OutcomeUnknownError:
        raise
    except TransientError as exc:
        raise _unknown(
            f"transfer order {found.ref_key} exists in 1C but posting or verifying it failed", exc
        ) from exc


async def _post_and_verify(
    transport: ODataTransport, doc: TransferOrderDocument, found: OrderState, created_now: bool
) -> DeliveredDocument:
    ref_key, label = found.ref_key, found.label
    if found.deleted:
        raise PermanentError(
            f"{label} is marked for deletion in 1C (by a user, or by the hub after 1C refused "
            "to post it); the hub will neither post nor recreate it, and the next run plans "
            "its items again",
            system=SYSTEM,
            code="deleted",
        )
    if not found.posted:
        try:
            await transport.send(
                "POST", _entity_url(transport, ref_key, "Post"), None, what=f"posting {label}"
            )
        except PermanentError as refusal:
            await _believe_refusal(transport, found, refusal)
        else:
            log.info("onec_transfer_posted", ref_key=ref_key)
    try:
        stored = await _reread(transport, ref_key, label)
    except TransientError:
        raise
    except ConnectorError as exc:
        # The order exists; an answer about it that cannot be used says nothing about it.
        raise _unknown(f"{label} exists in 1C but re-reading it failed", exc) from exc
    if stored.state.number != found.number:
        raise OutcomeUnknownError(
            f"1C gave {label} two numbers ({found.number!r}, then {stored.state.number!r})",
            system=SYSTEM,
        )
    problems = differences(doc, stored)
    if problems:
        raise PermanentError(
            f"{label} in 1C differs from what the hub sent: " + "; ".join(problems),
            system=SYSTEM,
            code="verify",
        )
    return DeliveredDocument(
        external_id=ref_key, number=stored.state.number, created_now=created_now
    )


async def _current(
    transport: ODataTransport, found: OrderState, refusal: PermanentError, why: str
) -> OrderState:
    """The order's state now; any failure to tell is ``OutcomeUnknownError``."""
    what = f"re-reading {found.label} {why}"
    try:
        answer = await transport.get_json(_entity_url(transport, found.ref_key), what=what)
    except ConnectorError as exc:
        raise _unknown(f"1C refused to post {found.label} ({refusal}); {what} failed", exc) from exc
    state = order_state(answer)
    if isinstance(state, str) or state.ref_key.lower() != found.ref_key.lower():
        reason = state if isinstance(state, str) else f"it describes order {state.ref_key}"
        raise _unknown(f"1C refused to post {found.label} ({refusal})", malformed(what, reason))
    return state


async def _believe_refusal(
    transport: ODataTransport, found: OrderState, refusal: PermanentError
) -> None:
    """A posting refusal is believed only when the order is indeed unposted: then the draft is
    withdrawn (``_withdraw``, never returns). If a re-read shows it posted, the answer was not
    1C's refusal (a proxy's, a garbled one) and the delivery goes on to verify the order."""
    state = await _current(transport, found, refusal, "after a refused posting")
    if state.posted and not state.deleted:
        log.warning(
            "onec_transfer_refusal_contradicted", ref_key=found.ref_key, answer=str(refusal)
        )
        return
    await _withdraw(transport, state, refusal)


async def _withdraw(
    transport: ODataTransport, found: OrderState, refusal: PermanentError
) -> NoReturn:
    """1C refused to post the draft: mark it for deletion, then fail for good with 1C's text.

    Why mark it rather than keep, delete or reuse it: an unposted draft moves no register, but
    left alone it could be posted by a user later, after the next run (which no longer counts
    this dead document) has ordered the same items again — the units would be moved twice.
    ``DeletionMark`` (via PATCH, as the reference advises; ``DELETE`` is a physical delete)
    makes that impossible (1C does not post a document marked for deletion), keeps the
    ``Ref_Key`` and the ``Комментарий`` marker, so the outcome-unknown lookup still finds this
    order and never creates a second one, and leaves the decision visible to the 1C user.
    Reusing the draft on a later attempt would need the outbox to keep retrying a document the
    next run re-plans anyway. A retry of the dead entry finds the order marked for deletion
    and stops (``_post_and_verify``).

    A mark whose answer is lost is checked by a re-read, so 1C's text is kept when the mark got
    through; if it cannot be told, the attempt is ``OutcomeUnknownError``: the retry looks the
    draft up, posts it again, and withdraws it again if 1C still refuses.
    """
    label = found.label
    reason = refusal.remote_message or str(refusal)
    if not found.deleted:
        try:
            await transport.send(
                "PATCH",
                _entity_url(transport, found.ref_key),
                {"DeletionMark": True},
                what=f"marking {label} for deletion",
            )
        except TransientError as exc:
            now = await _current(transport, found, refusal, "after marking it for deletion")
            if not now.deleted:
                raise _unknown(
                    f"1C refused to post {label} ({reason}), and marking the draft for "
                    "deletion failed",
                    exc,
                ) from exc
        except PermanentError as exc:
            raise PermanentError(
                f"1C refused to post {label}: {reason}; the unposted draft could not be marked "
                f"for deletion ({exc.describe()}): mark it in 1C by hand",
                system=SYSTEM,
                status=refusal.status,
                code=refusal.code,
                remote_message=refusal.remote_message,
            ) from refusal
    log.warning("onec_transfer_refused", ref_key=found.ref_key, reason=reason)
    raise PermanentError(
        f"1C refused to post {label}: {reason}; the draft is marked for deletion and counts "
        "for nothing, so the next run plans these items again from fresh stock",
        system=SYSTEM,
        status=refusal.status,
        code=refusal.code,
        remote_message=refusal.remote_message,
    ) from refusal


async def _reread(transport: ODataTransport, ref_key: str, label: str) -> StoredOrder:
    """The order as 1C stores it now, its lines read separately if the answer lacks them."""
    what = f"re-reading {label}"
    row = await transport.get_json(_entity_url(transport, ref_key), what=what)
    lines = row.get("Товары") if isinstance(row, dict) else None
    if isinstance(row, dict) and not isinstance(lines, list):
        where = odata.eq("Ref_Key", odata.guid(ref_key))
        relative = transport.url(ORDER_LINES, [("$format", "json"), ("$filter", where)])
        lines = rows_of(await transport.get_json(relative, what=f"lines of {label}"), "lines")
    stored = stored_order(row, lines, ref_key)
    if isinstance(stored, str):
        raise malformed(what, stored)
    return stored
