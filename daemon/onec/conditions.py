"""Virtual-table calls (``Register/Balance``): the ``Condition`` form the server reads.

The developer guide writes the condition with its inner quotes as they are,
``Balance(Condition='Склад_Key eq guid'…'')`` (§17.4.9, §17.4.13.2); public code calling real
bases sends the OData-escaped form, ``Condition='Склад_Key eq guid''…'''``; the guide also
passes the parameters as query options (``…/SliceLast?Condition=…``). Which of these a given
server takes is not documented, so ``onec.condition_form`` says:

* ``auto`` (default): the guide's form first. A refusal of the form — HTTP 400 with
  ``odata.error`` code 1 («Не удалось разобрать строку …») or 14 (a query option that cannot
  be parsed) — makes that request try the doubled form once. Every value in the hub's
  conditions is a GUID checked before it is sent, so such an answer is about how the
  condition was written, never about the data. The first form that works is kept for the
  life of the process (``onec_condition_form``) and used alone from then on;
* ``guide``, ``doubled``, ``query``: that form only, for a base that needs pinning.

``hubctl check`` forgets what was learnt, reads one small balance, and reports the form taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import structlog

from daemon.errors import ConnectorError, PermanentError
from daemon.onec import odata
from daemon.onec.answers import SYSTEM
from daemon.onec.odata import ConditionForm
from daemon.onec.transport import OPENING, ODataTransport

log = structlog.get_logger(__name__)

R = TypeVar("R")
Setting = Literal["auto", "guide", "doubled", "query"]
_PATH_FORMS: tuple[ConditionForm, ...] = ("guide", "doubled")
_PARSE_CODES = ("1", "14")


def is_form_refusal(error: ConnectorError) -> bool:
    """A 400 from 1C itself saying it could not parse what it was given."""
    return isinstance(error, PermanentError) and error.status == 400 and error.code in _PARSE_CODES


class ConditionForms:
    """The form(s) to send a ``Condition`` in, and what the server has shown it takes."""

    def __init__(self, setting: Setting) -> None:
        self.setting = setting
        self.known: ConditionForm | None = None
        self._refused: list[ConditionForm] = []  # before ``known`` was found, in order

    def candidates(self, condition: str) -> list[ConditionForm]:
        """The forms to try for ``condition``, in order; PermanentError if none can carry it."""
        order: list[ConditionForm]
        if self.setting != "auto":
            order = [self.setting]
        elif self.known is not None:
            order = [self.known, *(f for f in _PATH_FORMS if f != self.known)]
        else:
            # A form another request saw refused goes last, not first.
            order = sorted(_PATH_FORMS, key=lambda form: form in self._refused)
        usable = [form for form in order if odata.expressible(condition, form)]
        if not usable:
            raise PermanentError(
                f"a Condition cannot be sent safely in the {'/'.join(order)} form "
                f"(onec.condition_form = {self.setting!r}): {condition}",
                system=SYSTEM,
                code="condition_form",
            )
        return usable

    def batching_form(self) -> ConditionForm:
        """The form to cut batches for: the one in use, else the longest that may be tried
        (the doubled form is the guide's with more quotes, so what fits it fits both)."""
        if self.setting != "auto":
            return self.setting
        return self.known or "doubled"

    def refused(self, form: ConditionForm, error: PermanentError) -> None:
        # Expected while "auto" is still finding out; worth a warning once a form is settled.
        probing = self.setting == "auto" and self.known is None
        if probing and form not in self._refused:
            self._refused.append(form)
        (log.info if probing else log.warning)(
            "onec_condition_form_refused",
            form=form,
            setting=self.setting,
            code=error.code,
            remote_message=error.remote_message,
        )

    def worked(self, form: ConditionForm) -> None:
        if self.known == form:
            return
        self.known = form
        log.info(
            "onec_condition_form",
            form=form,
            setting=self.setting,
            refused=list(self._refused),
        )

    def forget(self) -> None:
        """Start over (``hubctl check`` asks the server again)."""
        self.known = None
        self._refused.clear()

    def describe(self) -> str:
        if self.known is None:
            return f"not known yet (onec.condition_form = {self.setting!r})"
        if self.setting != "auto":
            return f"{_WORDS[self.known]}, pinned by onec.condition_form"
        refused = ", ".join(_WORDS[form] for form in self._refused)
        after = f" after the server refused the {refused}" if refused else ""
        return f"{_WORDS[self.known]}, detected{after}"


_WORDS: dict[ConditionForm, str] = {
    "guide": "guide form (Condition='…guid'…'')",
    "doubled": "doubled form (Condition='…guid''…''')",
    "query": "query-option form (Balance?Condition=…)",
}


async def read_balance(
    transport: ODataTransport,
    forms: ConditionForms,
    register: str,
    condition: str,
    *,
    dimensions: str,
    select: str,
    what: str,
    convert: Callable[[list[Any]], R],
    priority: int = OPENING,
) -> tuple[int, R]:
    """(rows, ``convert(rows)``) of ``register/Balance`` with ``condition``, in the form the
    server takes: a refusal of one form is followed by the next candidate, once."""
    refusals: list[tuple[ConditionForm, PermanentError]] = []
    for form in forms.candidates(condition):
        path, options = odata.balance_call(register, condition, form, dimensions=dimensions)
        relative = transport.url(path, [*options, ("$format", "json"), ("$select", select)])
        try:
            result = await transport.get_rows(
                relative, what=what, convert=convert, priority=priority
            )
        except PermanentError as exc:
            if not is_form_refusal(exc):
                raise
            forms.refused(form, exc)
            refusals.append((form, exc))
            continue
        forms.worked(form)
        return result
    form, last = refusals[-1]
    tried = " and ".join(_WORDS[f] for f, _ in refusals)
    raise PermanentError(
        f"1C could not parse the Condition of {what} in the {tried} "
        f"(onec.condition_form = {forms.setting!r})",
        system=SYSTEM,
        status=last.status,
        code=last.code,
        remote_message=last.remote_message,
    )
