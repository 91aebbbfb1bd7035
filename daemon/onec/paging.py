"""Reading a whole (filtered) entity set: ``$top``/``$skip`` pages under a stable ``$orderby``.

1C sends no ``odata.nextLink``, so the client pages. ``/$count`` only says how far to read:
pages are asked for at most ``PAGE_WINDOW`` at a time (the slots still cap what is in flight),
a count over ``MAX_ROWS`` is refused, and past the count (rows added while reading) at most
``EXTRA_PAGES`` more pages are read. The count and the pages must agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from daemon.errors import PermanentError, TransientError
from daemon.onec import odata
from daemon.onec.answers import MALFORMED, SYSTEM
from daemon.onec.transport import AHEAD, FOLLOW_UP, OPENING, ODataTransport, task_group

PAGE_WINDOW = 64
MAX_ROWS = 10_000_000
EXTRA_PAGES = 1000


def farthest_page(
    transport: ODataTransport,
    set_name: str,
    *,
    where: str,
    select: Sequence[str],
    orderby: Sequence[str],
) -> str:
    """The encoded URL of the farthest page ``read_all`` may ask for with these options:
    what a caller cutting a filter into batches by URL length has to measure."""
    size = transport.page_size
    farthest = MAX_ROWS + EXTRA_PAGES * size
    params = [*_page_params(where, select, orderby), ("$top", str(size))]
    return odata.relative_url(set_name, [*params, ("$skip", str(farthest))])


async def read_all(
    transport: ODataTransport,
    set_name: str,
    *,
    where: str,
    select: Sequence[str],
    orderby: Sequence[str],
    what: str,
    large: bool = False,
    count: int | None = None,
    convert: Callable[[list[Any]], list[Any]] | None = None,
    ahead: bool = False,
) -> list[Any]:
    """Every row of a (filtered) entity set, paged with ``$top``/``$skip`` and a stable
    ``$orderby`` (1C sends no ``odata.nextLink``, so the client pages).

    The pages after the first are fetched concurrently once ``/$count`` says how many
    there are. ``large`` asks for the count together with the first page (one round trip
    less when the set surely spans pages); a known ``count`` skips asking. ``convert``
    turns each page's rows into records (one per row) as soon as that page arrives, so the
    work overlaps the other pages' round trips instead of following them. ``ahead`` lets
    the pages after the first go before other reads' (the caller has work to do once
    they are all in).

    The count only says how far to read, never how much work to plan at once: pages are
    asked for in windows of ``PAGE_WINDOW`` and a count over ``MAX_ROWS`` is refused. The
    count and the pages must agree: a short page before the last one, or an empty page
    where the count says rows are (a row list lost or cut on the way, a count far too
    large), is a ``TransientError``."""
    size = transport.page_size
    params = _page_params(where, select, orderby)
    follow_up = AHEAD if ahead else FOLLOW_UP

    async def page(index: int) -> tuple[int, list[Any]]:
        """(rows 1C sent, records kept): ``convert`` may skip a row, a page is judged
        full or short by what 1C sent."""
        relative = transport.url(
            set_name, [*params, ("$top", str(size)), ("$skip", str(index * size))]
        )
        return await transport.get_rows(
            relative,
            what=f"{what} (page {index + 1})",
            convert=convert or _as_sent,
            most=size,
            priority=OPENING if index == 0 else follow_up,
        )

    def disagree(index: int, sent: int) -> TransientError:
        # Rows removed while the pages were read can do this too, so a later read may
        # well succeed; a row list lost or cut on the way does it every time.
        return TransientError(
            f"1C counts {count} rows of {what} but sent {sent} on page {index + 1} of "
            f"{-(-(count or 0) // size)} pages: the set changed while it was read, or the "
            "answer is broken",
            system=SYSTEM,
        )

    records: list[Any] = []
    read = index = 0  # rows 1C sent, pages read
    if count is None:
        if large:
            async with task_group() as group:
                first = group.create_task(page(0))
                counted = group.create_task(transport.count(set_name, where, what=what))
            (read, records), count = first.result(), counted.result()
        else:
            read, records = await page(0)
            if read < size:
                return records
            count = await transport.count(set_name, where, what=what)
        index = 1
        if read < size:  # the first page is the last
            if (read == 0 and count > 0) or count > size:
                raise disagree(0, read)
            return records
    if count > MAX_ROWS:
        raise PermanentError(
            f"1C counts {count} rows of {what}, more than the hub reads ({MAX_ROWS})",
            system=SYSTEM,
            code=MALFORMED,
        )
    # A count handed in is only a hint: the first page is read even when it says 0.
    planned = max(-(-count // size), 1 - index)
    while index < planned:
        window = range(index, min(planned, index + PAGE_WINDOW))
        async with task_group() as group:
            tasks = [group.create_task(page(number)) for number in window]
        for number, task in zip(window, tasks, strict=True):
            sent, kept = task.result()
            # Every page before the last is full, and the last one holds something.
            if (sent < size and number < planned - 1) or (not sent and number * size < count):
                raise disagree(number, sent)
            read += sent
            records.extend(kept)
        index = window.stop
    # More rows than counted: some were added meanwhile; read on while pages come full.
    extra = 0
    while read > count and read == index * size:
        if extra == EXTRA_PAGES:
            raise PermanentError(
                f"1C keeps sending full pages of {what} past the {count} rows it counted",
                system=SYSTEM,
                code=MALFORMED,
            )
        sent, kept = await page(index)
        read += sent
        records.extend(kept)
        index += 1
        extra += 1
    return records


def _page_params(
    where: str, select: Sequence[str], orderby: Sequence[str]
) -> list[tuple[str, str]]:
    filters = [("$filter", where)] if where else []
    params = [("$format", "json"), *filters, ("$select", ",".join(select))]
    params.append(("$orderby", ",".join(orderby)))
    return params


def _as_sent(rows: list[Any]) -> list[Any]:
    return rows
