"""Quiet start: a new worker consumes a standby queue of its own until the readiness gate has judged it.

A worker drainctl starts is given `-Q drainctl.standby.<hostname>` instead of the pool's queues, so
it takes no pool message before it is judged. Once it passed the gate, `add_consumer` adds each
pool queue, `active_queues` confirms it, and only then is the standby consumer cancelled.

`add_consumer` and `-Q` declare a queue the same way when the worker's app defines it
(`task_queues`, or the default queue): both use that definition. A queue the app does not define is
created on the fly, and there the two paths differ: `-Q` applies `task_create_missing_queue_type`
(quorum) and `task_create_missing_queue_exchange_type` (Celery >= 5.5), `add_consumer` declares a
classic queue on a direct exchange. The standby queue was itself created on the fly by `-Q`, so its
declaration (as `active_queues` reports it) is exactly what `-Q` would have made of any undefined
name: `add_consumer_arguments` passes the same exchange type and queue arguments for each pool queue.

One thing `add_consumer` cannot do: Celery >= 5.5 binds a quorum queue on a non-direct exchange for
native delayed delivery (countdown/ETA) only when the worker starts. `delayed_delivery_gaps` names
such queues, so that the shell can say so; those pools need `quiet_start = false`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

STANDBY_PREFIX: Final = "drainctl.standby."


def standby_queue(hostname: str) -> str:
    """The standby queue of a worker: named after it, never routed to."""
    return f"{STANDBY_PREFIX}{hostname}"


def is_standby(queue: str) -> bool:
    return queue.startswith(STANDBY_PREFIX)


def on_standby(queues: tuple[str, ...] | None) -> bool:
    """The worker consumes its standby queue (it has not switched to the pool's queues yet)."""
    return queues is not None and any(is_standby(q) for q in queues)


def add_consumer_arguments(queue: str, standby: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `add_consumer` arguments that declare `queue` as `-Q` would have on this worker.

    `standby` is the worker's `active_queues` entry for its standby queue (None: not reported, then
    Celery's plain defaults: a classic queue on a direct exchange named after it).
    """
    arguments: dict[str, Any] = {"queue": queue, "exchange": queue, "routing_key": queue}
    exchange = standby.get("exchange") if standby is not None else None
    exchange_type = exchange.get("type") if isinstance(exchange, Mapping) else None
    arguments["exchange_type"] = exchange_type if isinstance(exchange_type, str) and exchange_type else "direct"
    queue_arguments = standby.get("queue_arguments") if standby is not None else None
    if isinstance(queue_arguments, Mapping) and queue_arguments:
        arguments["queue_arguments"] = dict(queue_arguments)
    return arguments


def standby_declaration(replies: Any, hostname: str) -> Mapping[str, Any] | None:
    """The standby queue's entry in an `active_queues` reply (a list of queue dicts), if there is one."""
    if not isinstance(replies, list):
        return None
    name = standby_queue(hostname)
    for entry in replies:
        if isinstance(entry, Mapping) and entry.get("name") == name:
            return entry
    return None


def delayed_delivery_gaps(replies: Any, queues: tuple[str, ...]) -> list[str]:
    """The queues among `queues` that an `active_queues` reply shows as quorum queues on a non-direct
    exchange: Celery binds those for native delayed delivery at worker start only, never on add_consumer."""
    if not isinstance(replies, list):
        return []
    gaps = []
    for entry in replies:
        if not isinstance(entry, Mapping) or entry.get("name") not in queues:
            continue
        arguments = entry.get("queue_arguments")
        exchange = entry.get("exchange")
        quorum = isinstance(arguments, Mapping) and arguments.get("x-queue-type") == "quorum"
        kind = exchange.get("type") if isinstance(exchange, Mapping) else None
        if quorum and kind not in (None, "", "direct"):
            gaps.append(str(entry["name"]))
    return sorted(gaps)
