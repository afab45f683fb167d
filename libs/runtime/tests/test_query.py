"""Pure helpers: redelivery backoff and the one list-query builder."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Select, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from praxis_contracts.common import SearchFilters
from praxis_contracts.errors import InvalidRequest
from praxis_runtime.bus import retry_delay
from praxis_runtime.query import apply_filters, where_all


class Base(DeclarativeBase):
    pass


class Widget(Base):
    __tablename__ = "widgets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str]
    created_at: Mapped[datetime]
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB)
    workcell_id: Mapped[uuid.UUID | None]


SORTABLE = {"name": Widget.name, "created_at": Widget.created_at}


def sql(stmt: Select[Any]) -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return " ".join(str(stmt.compile(dialect=dialect)).split())


def build(filters: SearchFilters, **kwargs: Any) -> Select[Any]:
    return apply_filters(
        select(Widget), filters, created_at=Widget.created_at, sortable=SORTABLE, **kwargs
    )


# -- retry_delay -----------------------------------------------------------------------------


def test_retry_delay_doubles_from_the_first_redelivery() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.6]


def test_retry_delay_never_goes_below_the_first_step() -> None:
    assert retry_delay(0) == retry_delay(-3) == 0.2


def test_retry_delay_is_capped() -> None:
    delays = [retry_delay(n) for n in range(1, 40)]
    assert delays == sorted(delays)
    assert max(delays) == 10.0
    assert retry_delay(8) == 10.0


def test_retry_delay_stays_capped_for_any_attempt_count() -> None:
    """``max_deliver`` has no upper bound, so neither has the delivery count."""
    assert retry_delay(5000) == 10.0


# -- apply_filters ---------------------------------------------------------------------------


def test_default_order_is_newest_first() -> None:
    assert sql(build(SearchFilters())).endswith("ORDER BY widgets.created_at DESC")


@pytest.mark.parametrize(
    ("sort_by", "order"),
    [("name", "widgets.name ASC"), ("+name", "widgets.name ASC"), ("-name", "widgets.name DESC")],
)
def test_sort_by_a_sortable_field(sort_by: str, order: str) -> None:
    assert sql(build(SearchFilters(sort_by=sort_by))).endswith(f"ORDER BY {order}")


@pytest.mark.parametrize("sort_by", ["colour", "-colour", "-", "properties"])
def test_sort_by_an_unknown_field_is_an_invalid_request(sort_by: str) -> None:
    with pytest.raises(InvalidRequest, match="cannot sort by") as caught:
        build(SearchFilters(sort_by=sort_by))
    assert caught.value.details["allowed"] == ["created_at", "name"]
    assert caught.value.details["field"] == "sort_by"


def test_date_range_bounds_created_at() -> None:
    start, end = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)
    text = sql(build(SearchFilters(date_range_start=start, date_range_end=end)))
    assert "widgets.created_at >= %(created_at_1)s" in text
    assert "widgets.created_at < %(created_at_2)s" in text


def test_property_filters_use_jsonb_containment() -> None:
    filters = SearchFilters(property_filters={"colour": "red"})
    assert "widgets.properties @> %(properties_1)s" in sql(
        build(filters, properties=Widget.properties)
    )


def test_property_filters_need_a_properties_column() -> None:
    with pytest.raises(InvalidRequest, match="property_filters"):
        build(SearchFilters(property_filters={"colour": "red"}))


def test_a_supported_relation_filter_becomes_a_where_clause() -> None:
    filters = SearchFilters(workcell_accession_id=uuid.uuid4())
    text = sql(build(filters, relations={"workcell_accession_id": Widget.workcell_id}))
    assert "WHERE widgets.workcell_id = %(workcell_id_1)s" in text


@pytest.mark.parametrize(
    "field", ["machine_accession_id", "resource_accession_id", "protocol_run_accession_id"]
)
def test_a_relation_filter_the_list_does_not_support_is_an_invalid_request(field: str) -> None:
    filters = SearchFilters(**{field: uuid.uuid4()})
    with pytest.raises(InvalidRequest, match=field):
        build(filters, relations={"workcell_accession_id": Widget.workcell_id})


def test_no_filters_means_no_where_clause() -> None:
    assert "WHERE" not in sql(build(SearchFilters()))


def test_where_all_skips_missing_conditions() -> None:
    stmt = where_all(select(Widget), None, Widget.name == "a", None)
    text = sql(stmt)
    assert text.count("widgets.name = ") == 1
    assert sql(where_all(select(Widget), None)) == sql(select(Widget))
