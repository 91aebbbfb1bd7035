"""The ``[onec]`` section of config.toml."""

from __future__ import annotations

from typing import Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator


class OneCSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: AnyHttpUrl = Field(
        description="Root of the OData publication, ending in /odata/standard.odata/"
    )
    username: str = Field(min_length=1, description="1C user (UTF-8); password is a secret")
    ut_version: Literal["auto", "11.4", "11.5"] = "auto"
    organization: str = Field(default="", description="Организация name; empty = the only one")
    priority: str = Field(
        default="Средний",
        description="Catalog_Приоритеты name for the orders; if absent and only one exists, it",
    )
    request_timeout_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=15.0, gt=0)
    max_concurrency: int = Field(default=4, ge=1, le=32)
    page_size: int = Field(default=1000, ge=1, le=10000)
    max_url_bytes: int = Field(
        default=2048,
        ge=512,
        le=65536,
        description="Longest request path+query, bytes as encoded (IIS maxQueryString: 2048)",
    )
    max_path_segment_chars: int = Field(
        default=260,
        ge=128,
        le=32766,
        description="Longest path segment sent, in characters once decoded "
        "(HTTP.sys UrlSegmentMaxLength 260)",
    )
    condition_form: Literal["auto", "guide", "doubled", "query"] = Field(
        default="auto",
        description="How Condition is sent to a virtual table: the guide's form, quotes doubled, "
        "or as query options; auto tries the guide's, then doubled, and keeps what worked",
    )
    read_attempts: int = Field(
        default=4, ge=1, le=10, description="Tries per idempotent GET before a TransientError"
    )
    retry_base_s: float = Field(default=1.0, gt=0, le=60)
    retry_cap_s: float = Field(default=15.0, gt=0, le=600)
    warehouse_keys: dict[str, str] = Field(
        default_factory=dict, description="Pinned Ref_Key per warehouse name"
    )

    @field_validator("base_url")
    @classmethod
    def _no_credentials_in_url(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        # the value is never repeated in the error: it may hold the password
        if value.username or value.password:
            raise ValueError(
                "a URL without 'user:password@': set [onec] username and give the password "
                "as the onec_password credential (HUB_ONEC_PASSWORD)"
            )
        return value
