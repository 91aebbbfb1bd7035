"""The ``[moysklad]`` section of config.toml."""

from __future__ import annotations

from typing import Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field


class MoySkladSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: AnyHttpUrl = AnyHttpUrl("https://api.moysklad.ru/api/remap/1.2/")
    auth: Literal["token", "password"] = "token"
    login: str = Field(default="", description="user@account, only for auth = 'password'")
    organization: str = Field(min_length=1)
    agent: str = Field(min_length=1, description="counterparty the order is placed for")
    store: str = Field(default="")
    match_key: Literal["article", "code", "externalCode"] = "article"
    price_type: str = Field(default="", description="sale price type name; empty = price 0")
    request_weight: int = Field(default=4, ge=1, le=45)
    request_timeout_s: float = Field(default=300.0, gt=0)
