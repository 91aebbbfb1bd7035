"""The ``[moysklad]`` section of config.toml."""

from __future__ import annotations

from typing import Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator, model_validator


class MoySkladSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: AnyHttpUrl = AnyHttpUrl("https://api.moysklad.ru/api/remap/1.2/")
    auth: Literal["token", "password"] = "token"
    login: str = Field(default="", description="user@account, only for auth = 'password'")
    organization: str = Field(min_length=1, description="legal entity: name or id")
    agent: str = Field(min_length=1, description="counterparty the order is placed for")
    store: str = Field(default="", description="warehouse: name or id; empty = none")
    order_state: str = Field(default="", description="state name for new orders; empty = default")
    final_states: tuple[str, ...] = Field(
        default=(),
        description="state names that close an order besides Successful/Unsuccessful ones",
    )
    match_key: Literal["article", "code", "externalCode"] = "article"
    price_type: str = Field(default="", description="sale price type name; empty = price 0")
    request_weight: int = Field(default=4, ge=1, le=45)
    report_weight: int = Field(default=5, ge=1, le=45, description="/report/stock/all|bystore")
    request_timeout_s: float = Field(default=300.0, gt=0)
    connect_timeout_s: float = Field(default=15.0, gt=0)
    # The provider's bucket; only change these if МойСклад changes its published limits.
    bucket_units: int = Field(default=45, ge=1)
    bucket_interval_ms: int = Field(default=3000, ge=100)
    max_in_flight: int = Field(default=5, ge=1, le=5)
    max_429_retries: int = Field(default=5, ge=0, le=20)
    read_retries: int = Field(default=2, ge=0, le=10)
    retry_base_s: float = Field(default=1.0, gt=0)
    circuit_threshold: int = Field(default=20, ge=1, le=150)
    circuit_window_s: float = Field(default=60.0, gt=0)
    circuit_open_s: float = Field(default=60.0, gt=0)
    keepalive_s: float = Field(default=15.0, gt=0, lt=30)
    max_requests_per_connection: int = Field(default=100, ge=1, le=100)
    page_size: int = Field(default=1000, ge=1, le=1000)
    filter_lookup_max: int = Field(
        default=100,
        ge=0,
        description="up to this many items are looked up by filter; more page the product list",
    )

    @field_validator("base_url")
    @classmethod
    def _no_credentials_in_url(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        # the value is never repeated in the error: it may hold the password
        if value.username or value.password:
            raise ValueError(
                "a URL without 'user:password@': give the token as the moysklad_token "
                "credential (HUB_MOYSKLAD_TOKEN), or login and the moysklad_password credential"
            )
        return value

    @model_validator(mode="after")
    def _login_for_password(self) -> MoySkladSettings:
        if self.auth == "password" and "@" not in self.login:
            raise ValueError("login in the form 'user@account' when auth = 'password'")
        return self
