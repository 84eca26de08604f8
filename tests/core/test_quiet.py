"""Quiet start: the standby queue's name, and the `add_consumer` arguments read from its declaration."""

from __future__ import annotations

from typing import Any

import pytest

from drainctl.core.quiet import (
    STANDBY_PREFIX,
    add_consumer_arguments,
    delayed_delivery_gaps,
    is_standby,
    on_standby,
    standby_declaration,
    standby_queue,
)

HOST = "w1@host"
STANDBY = "drainctl.standby.w1@host"
POOL = "reports"


def entry(name: str = STANDBY, *, exchange_type: str = "direct", queue_arguments: Any = None,
          **replaced: Any) -> dict[str, Any]:
    """An `active_queues` reply entry as Celery 5.x sends it (`Queue.as_dict(recurse=True)`), with
    `replaced` keys set as given."""
    exchange = {"name": name, "type": exchange_type, "arguments": None, "durable": True, "passive": False,
                "auto_delete": False, "delivery_mode": None, "no_declare": False}
    return {
        "name": name, "exchange": exchange, "routing_key": name, "queue_arguments": queue_arguments,
        "binding_arguments": None, "consumer_arguments": None, "durable": True, "exclusive": False,
        "auto_delete": False, "no_ack": False, "alias": None, "bindings": [], "no_declare": None,
        "expires": None, "message_ttl": None, "max_length": None, "max_length_bytes": None, "max_priority": None,
        **replaced,
    }  # fmt: skip


def plain(**more: Any) -> dict[str, Any]:
    return {"queue": POOL, "exchange": POOL, "routing_key": POOL, "exchange_type": "direct", **more}


# --- names --------------------------------------------------------------------------------------------------


def test_the_standby_queue_is_named_after_the_worker() -> None:
    assert standby_queue(HOST) == STANDBY == STANDBY_PREFIX + HOST


@pytest.mark.parametrize(
    ("queue", "expected"),
    [
        (STANDBY, True),
        ("drainctl.standby.", True),
        ("drainctl.standby", False),
        ("drainctl.standbyw1@host", False),
        ("x.drainctl.standby.w1@host", False),
        ("celery", False),
        ("", False),
    ],
)
def test_is_standby_is_the_prefix(queue: str, expected: bool) -> None:
    assert is_standby(queue) is expected


@pytest.mark.parametrize(
    ("queues", "expected"),
    [
        (None, False),  # not known
        ((), False),  # consumes nothing
        (("celery", "reports"), False),  # switched
        ((STANDBY,), True),  # quiet
        (("reports", STANDBY), True),  # switching: pool queue added, standby not cancelled yet
        (("drainctl.standby.other@host",), True),  # any standby queue counts
    ],
)
def test_on_standby(queues: tuple[str, ...] | None, expected: bool) -> None:
    assert on_standby(queues) is expected


# --- add_consumer arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("standby", "expected"),
    [
        # Not reported: Celery's plain defaults (a classic queue on a direct exchange named after it).
        (None, plain()),
        # Reported as -Q created it without settings.
        (entry(), plain()),
        # task_create_missing_queue_exchange_type
        (entry(exchange_type="topic"), plain(exchange_type="topic")),
        (entry(exchange_type="fanout"), plain(exchange_type="fanout")),
        # task_create_missing_queue_type = "quorum"
        (entry(queue_arguments={"x-queue-type": "quorum"}), plain(queue_arguments={"x-queue-type": "quorum"})),
        # both
        (
            entry(exchange_type="topic", queue_arguments={"x-queue-type": "quorum"}),
            plain(exchange_type="topic", queue_arguments={"x-queue-type": "quorum"}),
        ),
        # task_queue_max_priority
        (entry(queue_arguments={"x-max-priority": 10}), plain(queue_arguments={"x-max-priority": 10})),
        # No usable exchange type: direct.
        (entry(exchange_type=""), plain()),
        (entry(exchange={"name": STANDBY, "type": None}), plain()),
        (entry(exchange={"name": STANDBY, "type": 5}), plain()),
        (entry(exchange={"name": STANDBY}), plain()),
        (entry(exchange=None), plain()),
        (entry(exchange=STANDBY), plain()),  # the exchange's name alone
        (entry(exchange=["topic"]), plain()),
        ({"name": STANDBY}, plain()),
        ({}, plain()),
        # No usable queue arguments: none passed (an empty dict would say nothing more).
        (entry(queue_arguments={}), plain()),
        (entry(queue_arguments=[("x-queue-type", "quorum")]), plain()),
        (entry(queue_arguments="x-queue-type=quorum"), plain()),
    ],
)
def test_add_consumer_arguments_copy_the_standby_declaration(standby: dict[str, Any] | None,
                                                            expected: dict[str, Any]) -> None:
    assert add_consumer_arguments(POOL, standby) == expected


def test_the_queue_arguments_passed_are_a_copy() -> None:
    standby = entry(queue_arguments={"x-queue-type": "quorum"})
    arguments = add_consumer_arguments(POOL, standby)
    arguments["queue_arguments"]["x-max-priority"] = 10
    assert standby["queue_arguments"] == {"x-queue-type": "quorum"}


def test_the_pool_queue_gets_its_own_exchange_and_routing_key() -> None:
    arguments = add_consumer_arguments("celery", entry(exchange_type="topic"))
    assert (arguments["queue"], arguments["exchange"], arguments["routing_key"]) == ("celery",) * 3


# --- the standby entry of an active_queues reply -------------------------------------------------------------


STANDBY_ENTRY = entry(exchange_type="topic")
OTHER_STANDBY = entry("drainctl.standby.w2@host")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (None, None),  # no reply
        ({"error": "unknown command"}, None),  # not a list
        ({STANDBY: STANDBY_ENTRY}, None),
        ("drainctl.standby.w1@host", None),
        ((STANDBY_ENTRY,), None),  # a tuple is not what Celery sends
        ([], None),  # consumes nothing
        ([entry("reports"), entry("celery")], None),  # switched already
        ([OTHER_STANDBY], None),  # another worker's standby queue
        ([None, "x", 3, ["name", STANDBY]], None),  # entries that are no mappings
        ([{"exchange": {"type": "topic"}}], None),  # an entry without a name
        ([STANDBY_ENTRY], STANDBY_ENTRY),
        ([entry("reports"), OTHER_STANDBY, "junk", STANDBY_ENTRY], STANDBY_ENTRY),
    ],
)
def test_standby_declaration(reply: Any, expected: dict[str, Any] | None) -> None:
    assert standby_declaration(reply, HOST) == expected


def test_standby_declaration_returns_the_first_matching_entry_itself() -> None:
    first, second = entry(exchange_type="topic"), entry(exchange_type="fanout")
    assert standby_declaration([entry("reports"), first, second], HOST) is first


QUORUM = {"x-queue-type": "quorum"}


@pytest.mark.parametrize(
    ("replies", "gaps"),
    [
        (None, []),
        ({"q": 1}, []),
        ([], []),
        (["q"], []),
        ([{"name": "q", "queue_arguments": QUORUM, "exchange": {"type": "topic"}}], ["q"]),
        ([{"name": "q", "queue_arguments": QUORUM, "exchange": {"type": "fanout"}},
          {"name": "p", "queue_arguments": QUORUM, "exchange": {"type": "headers"}}], ["p", "q"]),
        ([{"name": "q", "queue_arguments": QUORUM, "exchange": {"type": "direct"}}], []),
        ([{"name": "q", "queue_arguments": QUORUM, "exchange": {"type": ""}}], []),
        ([{"name": "q", "queue_arguments": QUORUM, "exchange": "q"}], []),
        ([{"name": "q", "queue_arguments": {"x-max-priority": 10}, "exchange": {"type": "topic"}}], []),
        ([{"name": "q", "queue_arguments": None, "exchange": {"type": "topic"}}], []),
        ([{"name": "other", "queue_arguments": QUORUM, "exchange": {"type": "topic"}}], []),
    ],
)
def test_delayed_delivery_gaps_are_quorum_pool_queues_on_non_direct_exchanges(
    replies: Any, gaps: list[str]
) -> None:
    assert delayed_delivery_gaps(replies, ("q", "p")) == gaps
