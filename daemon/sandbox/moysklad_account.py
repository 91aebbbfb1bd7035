"""The emulated МойСклад account: its data, knobs, counters and inspection helpers.

``MoySkladSandbox`` is what tests and the demo hold on to; the aiohttp app
(``moysklad_emulator.make_moysklad_app``) serves it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from daemon.sandbox.moysklad_limits import BucketMode, HeaderCounts, UserLimits
from daemon.sandbox.moysklad_orders import Order, OrderBook, State
from daemon.sandbox.moysklad_wire import (
    MEDIA_TYPE,
    Ids,
    meta,
    now_msk,
    reference,
    timestamp,
)

LOOKUP_TYPES = ("organization", "counterparty", "store", "product")
STATES = (
    ("Новый", 15106326, "Regular"),
    ("Подтвержден", 40931, "Regular"),
    ("Собран", 8825440, "Regular"),
    ("Отгружен", 10774205, "Successful"),
    ("Доставлен", 34617, "Successful"),
    ("Возврат", 15280409, "Unsuccessful"),
    ("Отменен", 10066329, "Unsuccessful"),
)
PRICE_TYPE = "Цена продажи"

Row = dict[str, Any]


class MoySkladSandbox:
    """The account, its data, the knobs and the counters behind the emulated API."""

    def __init__(
        self,
        products: Sequence[tuple[str, str, int]] = (),
        *,
        organization: str = "ООО «Бизнесмедиа»",
        agent: str = "ООО «Поставщик»",
        store: str = "Основной склад",
        token: str = "sandbox-token",
        login: str = "hub@bisnesmedia",
        password: str = "sandbox",
        weight: int = 4,
        seed: int = 0,
    ) -> None:
        self._ids = Ids(seed)
        self._seed = seed
        # knobs
        self.latency_s = 0.0
        self.fault_rate = 0.0
        self.drop_after_commit = 0
        self.plain_rate = 0.0
        self.weight = weight
        # per-login weights set while running (МойСклад changes them by date and by credential)
        self.weights: dict[str, int] = {}
        self.remaining_counts: HeaderCounts = "requests"
        # the next N requests find the budget drained, as if another program had spent it
        self.drain_next = 0
        self.capacity = 45
        self.interval_ms = 3000
        self.bucket_mode: BucketMode = "smooth"
        self.max_in_flight = 5
        self.max_in_flight_account = 20
        self.ban_after = 200
        self.batch_error_status = 200
        # counters
        self.request_count = 0
        self.count_415 = 0
        self.count_401 = 0
        self.count_429 = 0
        self.count_1073 = 0
        self.units_charged = 0
        self.faults_injected = 0
        self.drops = 0
        self.max_seen_in_flight = 0
        self.tokens_issued = 0
        self.plain_answers = 0
        self._peers: set[tuple[str, int]] = set()

        self._account = {
            "account": self._ids.new_id(),
            "employee": self._ids.new_id(),
            "group": self._ids.new_id(),
            "currency": self._ids.new_id(),
        }
        self._price_type = {
            "id": self._ids.new_id(),
            "name": PRICE_TYPE,
            "externalCode": "cbcf493b-55bc-11d9-848a-00112f43529a",
        }
        self._entities: dict[str, dict[str, Row]] = {kind: {} for kind in LOOKUP_TYPES}
        self._users: dict[str, str] = {login: password}
        self._tokens: dict[str, str] = {token: login}
        self._limits: dict[str, UserLimits] = {}
        self._account_in_flight = 0
        self._product_number = 0
        self.book = OrderBook(
            self._ids,
            [State(self._ids.new_id(), name, color, kind) for name, color, kind in STATES],
        )
        self.add_entity("organization", organization, inn="7801234567")
        self.add_entity("counterparty", agent, inn="7807654321", companyType="legal")
        self.add_entity("store", store)
        for article, name, price in products:
            self.add_product(article, name, price)

    # -- knobs and setup ---------------------------------------------------------------------

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = value
        self._ids = Ids(value)
        self.book.reseed(self._ids)

    @property
    def unique_names(self) -> bool:
        return self.book.unique_names

    @unique_names.setter
    def unique_names(self, value: bool) -> None:
        self.book.unique_names = value

    def add_entity(self, kind: str, name: str, **fields: Any) -> str:
        """Add an organization, counterparty or store; returns its id."""
        entity_id = self._ids.new_id()
        self._entities[kind][entity_id] = {
            "id": entity_id,
            "name": name,
            "code": fields.pop("code", f"{len(self._entities[kind]) + 1:05d}"),
            "externalCode": fields.pop("externalCode", self._ids.external_code()),
            "archived": fields.pop("archived", False),
            "updated": timestamp(now_msk()),
            **fields,
        }
        return entity_id

    def add_product(
        self,
        article: str,
        name: str,
        price_kopecks: int,
        *,
        code: str | None = None,
        external_code: str | None = None,
        archived: bool = False,
    ) -> str:
        self._product_number += 1
        return self.add_entity(
            "product",
            name,
            article=article,
            price=float(price_kopecks),
            code=code or f"{self._product_number:05d}",
            externalCode=external_code or self._ids.external_code(),
            archived=archived,
            pathName="",
        )

    def add_user(self, login: str, password: str, token: str | None = None) -> None:
        self._users[login] = password
        if token:
            self._tokens[token] = login

    def limits(self, login: str) -> UserLimits:
        if login not in self._limits:
            self._limits[login] = UserLimits(
                capacity=self.capacity,
                interval_ms=self.interval_ms,
                mode=self.bucket_mode,
                ban_after=self.ban_after,
            )
        return self._limits[login]

    def set_weight(self, weight: int, login: str | None = None) -> None:
        """From now on, charge ``login`` (default: the first user) ``weight`` units a request."""
        self.weights[login or next(iter(self._users))] = weight

    def weight_for(self, login: str) -> int:
        return self.weights.get(login, self.weight)

    def exhaust_budget(self, login: str | None = None) -> None:
        """Spend a user's whole bucket, as another program with the same user would."""
        self.limits(login or next(iter(self._users))).bucket.drain()

    def banned(self, login: str | None = None) -> bool:
        return self.limits(login or next(iter(self._users))).banned

    # -- inspection --------------------------------------------------------------------------

    def orders(self) -> list[dict[str, Any]]:
        return [
            {
                "id": order.id,
                "name": order.name,
                "syncId": order.sync_id,
                "externalCode": order.external_code,
                "description": order.description,
                "organization": order.organization,
                "agent": order.agent[1],
                "store": order.store,
                "moment": order.moment,
                "state": self.book.state(order.state).name,
                "positions": [
                    {
                        "product_id": p.assortment_id,
                        "quantity": p.quantity,
                        "shipped": p.shipped,
                        "price": p.price,
                    }
                    for p in order.positions
                ],
            }
            for order in self.book.orders.values()
        ]

    def mark_shipped(self, order_id: str) -> None:
        """Every position fully shipped and the order in the final state «Отгружен»."""
        order = self.book.orders[order_id]
        for position in order.positions:
            position.shipped = position.quantity
        order.state = self.book.state_named("Отгружен").id

    def entity_id(self, kind: str, name: str) -> str:
        return next(str(row["id"]) for row in self._entities[kind].values() if row["name"] == name)

    def exists(self, kind: str, entity_id: str) -> bool:
        if kind == "state":
            return any(state.id == entity_id for state in self.book.states)
        if kind in self._entities:
            return entity_id in self._entities[kind]
        if kind == "customerorder":
            return entity_id in self.book.orders
        return False

    # -- rendering ---------------------------------------------------------------------------

    def render_entity(self, base: str, kind: str, row: Row) -> Row:
        rendered: Row = {
            "meta": meta(base, kind, row["id"]),
            "id": row["id"],
            "accountId": self._account["account"],
            "owner": reference(base, "employee", self._account["employee"]),
            "shared": True,
            "group": reference(base, "group", self._account["group"]),
        }
        rendered.update({key: value for key, value in row.items() if key not in ("id", "price")})
        if kind == "product":
            currency = reference(base, "currency", self._account["currency"])
            rendered["salePrices"] = [
                {
                    "value": row["price"],
                    "currency": currency,
                    "priceType": self.render_price_type(base),
                }
            ]
            rendered["buyPrice"] = {"value": 0.0, "currency": currency}
            rendered["paymentItemType"] = "GOOD"
            rendered["variantsCount"] = 0
        return rendered

    def render_price_type(self, base: str) -> Row:
        return {
            "meta": {
                "href": f"{base}context/companysettings/pricetype/{self._price_type['id']}",
                "type": "pricetype",
                "mediaType": MEDIA_TYPE,
            },
            **self._price_type,
        }

    def render_order(self, base: str, order: Order, expand: frozenset[str]) -> Row:
        return self.book.render(
            base,
            order,
            account=self._account,
            expand_positions="positions" in expand,
            expand_state="state" in expand,
        )

    # -- request plumbing used by the app ----------------------------------------------------

    def authenticate(self, header: str) -> str | None:
        """The login an Authorization header stands for, or None."""
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer":
            return self._tokens.get(credentials.strip())
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            login, _, password = decoded.partition(":")
            if self._users.get(login) == password and password:
                return login
        return None

    def issue_token(self, login: str) -> str:
        """A new token for ``login``; its earlier tokens stop working (as the API does)."""
        for token in [t for t, owner in self._tokens.items() if owner == login]:
            del self._tokens[token]
        token = self._ids.token()
        self._tokens[token] = login
        self.tokens_issued += 1
        return token

    def note_peer(self, peer: object) -> None:
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._peers.add((str(peer[0]), int(peer[1])))

    @property
    def connections_used(self) -> int:
        """Distinct client connections (host, port) seen: keep-alive keeps this low."""
        return len(self._peers)

    def compress(self) -> bool:
        if self._ids.chance(self.plain_rate):
            self.plain_answers += 1
            return False
        return True

    def pick_fault(self) -> int | None:
        if self._ids.chance(self.fault_rate):
            self.faults_injected += 1
            return self._ids.choice([500, 502, 503])
        return None

    def enter(self, limits: UserLimits) -> bool:
        """Count a request in flight; False when the user or account is at its limit."""
        if (
            limits.in_flight >= self.max_in_flight
            or self._account_in_flight >= self.max_in_flight_account
        ):
            return False
        limits.in_flight += 1
        self._account_in_flight += 1
        self.max_seen_in_flight = max(self.max_seen_in_flight, limits.in_flight)
        return True

    def leave(self, limits: UserLimits) -> None:
        limits.in_flight -= 1
        self._account_in_flight -= 1

    def rows(self, kind: str) -> list[Row]:
        return list(self._entities[kind].values())

    def row(self, kind: str, entity_id: str) -> Row | None:
        return self._entities[kind].get(entity_id)

    def employee(self, base: str, login: str) -> Row:
        return {
            "meta": meta(base, "employee", self._account["employee"]),
            "id": self._account["employee"],
            "accountId": self._account["account"],
            "name": "Интеграция",
            "uid": login,
            "archived": False,
        }

    def price_types(self, base: str) -> list[Row]:
        return [self.render_price_type(base)]
