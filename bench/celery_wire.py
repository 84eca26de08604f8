"""A deterministic, lazily generated stream of Celery event messages in Celery's own wire format.

Shared by `ingest.py` (which materialises it once and publishes it) and `memory.py` (which feeds it
straight into the pure core, one message at a time).

What a real Celery 5.x prefork worker sends (celery/events/dispatcher.py, worker/strategy.py,
worker/request.py, worker/heartbeat.py):

- task events are buffered per worker and flushed as one JSON *list* under routing key
  ``task.multi``; here a worker flushes after 1..``max_batch`` events;
- ``worker-heartbeat`` is one JSON object under ``worker.heartbeat``, every ``freq`` seconds per
  worker (staggered), with ``active``/``processed``/``loadavg`` and the software fields;
- every event carries ``hostname``, ``utcoffset``, ``pid``, ``clock`` (one Lamport clock per worker
  process, shared by heartbeats and task events, so a buffered task event can carry a lower clock
  than a heartbeat published before it), ``timestamp`` and ``type``;
- each task goes task-received -> task-started -> task-succeeded on one worker.

Two streams: `CeleryEventStream` (the default: 50 workers, small task payloads, frequent heartbeats
relative to tasks) and `FleetEventStream` (a fleet at 300 tasks/s with ``task_send_sent_event`` on:
one ``task-sent`` message per task from the client, 5 % failures with tracebacks, larger args and
kwargs, at most 4 events per ``task.multi``). `make_stream` builds either by name.

Bodies are encoded like kombu's json serializer (stdlib ``json.dumps``, default separators, UTF-8).
Properties for publishing: content_type application/json, content_encoding utf-8, delivery_mode 1,
priority 0 and the header ``hostname`` (what kombu/Celery set).
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import random
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

TASK_NAMES = (
    "shop.tasks.process_order",
    "shop.tasks.send_receipt",
    "shop.tasks.resize_image",
    "billing.tasks.charge_card",
    "billing.tasks.refund",
    "reports.tasks.build_daily_report",
    "search.tasks.reindex_document",
    "mail.tasks.deliver",
)
SW_INFO = {"sw_ident": "py-celery", "sw_ver": "5.7.0", "sw_sys": "Linux"}


@dataclass(frozen=True, slots=True)
class WireMessage:
    routing_key: str
    hostname: str
    body: bytes
    events: int


@dataclass(slots=True)
class _Task:
    uuid: str
    name: str
    started: bool = False
    started_at: float = 0.0


@dataclass(slots=True)
class _Worker:
    hostname: str
    pid: int
    clock: int = 0
    processed: int = 0
    running: int = 0
    flush_at: int = 1
    buffer: list[dict[str, Any]] = field(default_factory=list)
    inflight: list[_Task] = field(default_factory=list)


@dataclass(slots=True)
class StreamStats:
    messages: int = 0
    events: int = 0
    bytes: int = 0
    task_messages: int = 0  # task.multi (a worker's buffered task events)
    sent_messages: int = 0  # task.sent (one per task, from the client)
    heartbeats: int = 0
    tasks: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    batch_sizes: dict[int, int] = field(default_factory=dict)  # events per task.multi message -> messages

    def record(self, routing_key: str, hostname: str, payload: Any, events: int) -> WireMessage:
        """Encode one message as kombu's json serializer does and count it."""
        body = json.dumps(payload).encode("utf-8")
        self.messages += 1
        self.events += events
        self.bytes += len(body)
        if routing_key == "task.multi":
            self.task_messages += 1
            self.batch_sizes[events] = self.batch_sizes.get(events, 0) + 1
        elif routing_key == "task.sent":
            self.sent_messages += 1
        else:
            self.heartbeats += 1
        return WireMessage(routing_key, hostname, body, events)


class CeleryEventStream:
    """Iterate to get `WireMessage`s. Stops once `target_events` events or `target_messages` messages were
    generated *or* `max_tasks` tasks were received (whichever is given / comes first), then finishes every
    in-flight task and flushes every buffer, so the stream ends with nothing in flight."""

    def __init__(
        self,
        *,
        workers: int = 50,
        target_events: int | None = 300_000,
        max_tasks: int | None = None,
        target_messages: int | None = None,
        seed: int = 1,
        max_batch: int = 3,
        heartbeat_freq: float = 2.0,
        task_events_per_heartbeat: float = 8.0,
        inflight_limit: int = 8,
        start: float = 1_767_225_600.0,  # 2026-01-01T00:00:00Z: fixed, so the bytes are deterministic
    ) -> None:
        if target_events is None and max_tasks is None and target_messages is None:
            raise ValueError("give target_events, max_tasks or target_messages")
        self.workers = workers
        self.target_events = target_events
        self.max_tasks = max_tasks
        self.target_messages = target_messages
        self.seed = seed
        self.max_batch = max_batch
        self.heartbeat_freq = heartbeat_freq
        self.task_events_per_heartbeat = task_events_per_heartbeat
        self.inflight_limit = inflight_limit
        self.start = start
        self.stats = StreamStats()
        # Simulated time of the message last yielded (a broker-less consumer can use it as its clock).
        self.now = start

    # ---------------------------------------------------------------- encoding
    def _emit(self, routing_key: str, hostname: str, payload: Any, events: int) -> WireMessage:
        return self.stats.record(routing_key, hostname, payload, events)

    def __iter__(self) -> Iterator[WireMessage]:
        rng = random.Random(self.seed)
        n_workers = self.workers
        workers = [
            _Worker(hostname=f"w{i:02d}@benchhost", pid=1000 + 7 * i, flush_at=rng.randint(1, self.max_batch))
            for i in range(n_workers)
        ]
        by_type = self.stats.by_type
        hb_step = self.heartbeat_freq / n_workers  # heartbeats are staggered evenly over the workers
        # task events per simulated second, so that heartbeats are 1/(1+ratio) of all events
        dt = hb_step / self.task_events_per_heartbeat
        t = self.start
        next_hb = self.start + hb_step / 2
        hb_index = 0
        generated = 0
        received = 0
        names = TASK_NAMES

        def task_event(w: _Worker, etype: str, fields: dict[str, Any], now: float) -> None:
            nonlocal generated
            w.clock += 1
            event = {"hostname": w.hostname, "utcoffset": 0, "pid": w.pid, "clock": w.clock, **fields,
                     "timestamp": now, "type": etype}
            w.buffer.append(event)
            by_type[etype] = by_type.get(etype, 0) + 1
            generated += 1

        def advance(w: _Worker, index: int, now: float) -> None:
            task = w.inflight[index]
            if not task.started:
                task.started = True
                task.started_at = now
                w.running += 1
                task_event(w, "task-started", {"uuid": task.uuid}, now)
            else:
                w.inflight[index] = w.inflight[-1]
                w.inflight.pop()
                w.running -= 1
                w.processed += 1
                runtime = round(now - task.started_at, 6) or 0.000731
                task_event(w, "task-succeeded", {"uuid": task.uuid, "result": "'ok'", "runtime": runtime}, now)

        def receive(w: _Worker, now: float) -> None:
            nonlocal received
            task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            name = names[rng.randrange(len(names))]
            w.inflight.append(_Task(task_id, name))
            received += 1
            task_event(w, "task-received", {
                "uuid": task_id, "name": name,
                "args": f"({rng.randrange(100_000)}, '{name.rsplit('.', 1)[-1]}')",
                "kwargs": f"{{'priority': {rng.randrange(10)}}}",
                "root_id": task_id, "parent_id": None, "retries": 0, "eta": None, "expires": None,
            }, now)

        def flush(w: _Worker) -> WireMessage:
            batch, w.buffer = w.buffer, []
            w.flush_at = rng.randint(1, self.max_batch)
            return self._emit("task.multi", w.hostname, batch, len(batch))

        def done() -> bool:
            if self.target_events is not None and generated >= self.target_events:
                return True
            if self.target_messages is not None and self.stats.messages >= self.target_messages:
                return True
            return self.max_tasks is not None and received >= self.max_tasks

        while not done():
            t += dt
            while next_hb <= t:
                w = workers[hb_index % n_workers]
                hb_index += 1
                self.now = next_hb
                w.clock += 1
                generated += 1
                by_type["worker-heartbeat"] = by_type.get("worker-heartbeat", 0) + 1
                loadavg = [round(rng.uniform(0.1, 2.0), 2) for _ in range(3)]
                yield self._emit("worker.heartbeat", w.hostname, {
                    "hostname": w.hostname, "utcoffset": 0, "pid": w.pid, "clock": w.clock,
                    "freq": self.heartbeat_freq, "active": w.running, "processed": w.processed,
                    "loadavg": loadavg, **SW_INFO, "timestamp": next_hb, "type": "worker-heartbeat",
                }, 1)
                next_hb += hb_step
            self.now = t
            w = workers[rng.randrange(n_workers)]
            can_receive = len(w.inflight) < self.inflight_limit and (
                self.max_tasks is None or received < self.max_tasks)
            if can_receive and (not w.inflight or rng.random() < 1 / 3):
                receive(w, t)
            elif w.inflight:
                advance(w, rng.randrange(len(w.inflight)), t)
            else:
                continue
            if len(w.buffer) >= w.flush_at:
                yield flush(w)
        # Finish every task in flight, then flush what is still buffered.
        for w in workers:
            while w.inflight:
                t += dt
                self.now = t
                advance(w, 0, t)
                if len(w.buffer) >= w.flush_at:
                    yield flush(w)
            if w.buffer:
                yield flush(w)
        self.stats.tasks = received


# =========================================================================== the fleet stream

AIRFLOW_TASK = "airflow.providers.celery.executors.celery_executor_utils.execute_command"
# (dag_id, file under DAGS_FOLDER, task ids)
AIRFLOW_DAGS = (
    ("etl_orders_daily", "etl/orders_daily.py", ("extract_orders", "transform_orders", "load_orders_to_dwh")),
    ("marketing_attribution", "marketing/attribution.py", ("pull_ad_spend", "join_sessions", "publish_model")),
    ("inventory_sync_hourly", "inventory/sync_hourly.py", ("fetch_warehouse_stock", "reconcile_skus", "push_to_shop")),
    ("finance_ledger_close", "finance/ledger_close.py", ("export_ledger", "validate_balances", "archive_period")),
    ("ml_feature_refresh", "ml/feature_refresh.py", ("compute_user_features", "compute_item_features", "materialize")),
)
APP_TASKS = (  # tasks with dict kwargs of a few hundred bytes
    ("shop.tasks.process_order", "celery"),
    ("billing.tasks.charge_card", "billing"),
    ("reports.tasks.build_report", "reports"),
)
SMALL_TASKS = (  # an id as the only argument
    ("shop.tasks.send_receipt", "celery"),
    ("search.tasks.reindex_document", "search"),
    ("mail.tasks.deliver", "celery"),
)
CELERY_FRAMES = (
    '  File "/usr/local/lib/python3.11/site-packages/celery/app/trace.py", line 479, in trace_task\n'
    "    R = retval = fun(*args, **kwargs)\n"
    "                 ^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/usr/local/lib/python3.11/site-packages/celery/app/trace.py", line 779, in __protected_call__\n'
    "    return self.run(*args, **kwargs)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^\n"
)


@dataclass(slots=True)
class _Client:
    hostname: str
    pid: int
    clock: int = 0


@dataclass(slots=True)
class _FleetTask:
    uuid: str
    name: str
    runtime: float = 0.0
    started_at: float = 0.0
    received: dict[str, Any] = field(default_factory=dict)  # the fields task-received repeats from task-sent


@dataclass(slots=True)
class _FleetWorker:
    hostname: str
    pid: int
    clock: int = 0
    processed: int = 0
    reserved: int = 0  # received and not yet finished (prefetch = slots: acks_late, multiplier 1)
    running: int = 0
    flush_at: int = 1
    buffer: list[dict[str, Any]] = field(default_factory=list)


_SEND, _RECEIVE, _START, _FINISH, _HEARTBEAT = range(5)


class FleetEventStream:
    """A fleet at steady load, in simulated time: `workers` × `slots` (acks_late, prefetch multiplier 1, as
    Airflow runs Celery) fed at `rate` tasks/s (Poisson) by `clients` client processes that send with
    ``task_send_sent_event`` on.

    Per task, in this order: ``task-sent`` (one JSON object under ``task.sent``, from the *client*: its
    ``gen<pid>@<host>`` hostname, pid and Lamport clock; the fields of celery/app/amqp.py ``as_task_v2`` +
    ``send_task_message``), then on the worker ``task-received`` -> ``task-started`` -> ``task-succeeded`` or,
    for `failure_rate` of them, ``task-failed`` with ``exception`` (a repr) and a multi-line ``traceback``.
    Task events are buffered per worker and flushed as a ``task.multi`` list after 1..`max_batch` events.
    Heartbeats as in `CeleryEventStream`. Of the tasks, `mix[0]` are Airflow's ``execute_command`` (an
    ``airflow tasks run`` command list as args, kwargs ``{}``), `mix[1]` application tasks with dict kwargs
    of a few hundred bytes, the rest application tasks with one id as args. Task runtimes are log-normal
    (median `median_runtime_s`, at most 30 s); a task goes to the next worker (round robin) with a free slot.

    Stops sending once `target_events` events (or `target_messages` messages) are foreseen, then lets every
    task finish and flushes every buffer: the stream ends with nothing in flight.
    """

    def __init__(
        self,
        *,
        workers: int = 50,
        slots: int = 8,
        rate: float = 300.0,
        clients: int = 12,
        target_events: int | None = 300_000,
        target_messages: int | None = None,
        failure_rate: float = 0.05,
        max_batch: int = 4,
        heartbeat_freq: float = 2.0,
        median_runtime_s: float = 0.5,
        mix: tuple[float, float] = (0.4, 0.3),
        seed: int = 1,
        start: float = 1_767_225_600.0,
    ) -> None:
        if target_events is None and target_messages is None:
            raise ValueError("give target_events or target_messages")
        self.workers = workers
        self.slots = slots
        self.rate = rate
        self.clients = clients
        self.target_events = target_events
        self.target_messages = target_messages
        self.failure_rate = failure_rate
        self.max_batch = max_batch
        self.heartbeat_freq = heartbeat_freq
        self.median_runtime_s = median_runtime_s
        self.mix = mix
        self.seed = seed
        self.start = start
        self.stats = StreamStats()
        self.now = start

    # ---------------------------------------------------------------- task content
    @staticmethod
    def _iso(ts: float) -> str:
        return datetime.fromtimestamp(ts, tz=UTC).isoformat()

    def _airflow_task(self, rng: random.Random, now: float) -> tuple[str, str, str, str]:
        dag_id, path, task_ids = AIRFLOW_DAGS[rng.randrange(len(AIRFLOW_DAGS))]
        run = self._iso(now - now % 3600 - 3600 * rng.randrange(3))  # a recent hourly run
        command = ["airflow", "tasks", "run", dag_id, task_ids[rng.randrange(len(task_ids))], f"scheduled__{run}",
                   "--local", "--subdir", f"DAGS_FOLDER/{path}"]
        if rng.random() < 0.3:
            command += ["--pool", "default_pool"]
        return AIRFLOW_TASK, repr((command,)), "{}", "default"

    @staticmethod
    def _app_task(rng: random.Random, now: float) -> tuple[str, str, str, str]:
        name, queue = APP_TASKS[rng.randrange(len(APP_TASKS))]
        order = rng.randrange(10_000_000)
        customer = rng.randrange(1_000_000)
        kwargs: dict[str, Any] = {
            "order_id": order,
            "customer": {"id": customer, "email": f"customer{customer}@example.com",
                         "tier": ("basic", "silver", "gold")[rng.randrange(3)]},
            "items": [{"sku": f"SKU-{rng.randrange(100_000):05d}", "qty": rng.randint(1, 5)}
                      for _ in range(rng.randint(1, 3))],
            "currency": ("EUR", "USD", "GBP")[rng.randrange(3)],
            "trace_id": f"{rng.getrandbits(64):016x}",
        }
        if rng.random() < 0.5:
            kwargs["callback_url"] = f"https://shop.example.com/hooks/orders/{order}"
        return name, repr((order,)), repr(kwargs), queue

    @staticmethod
    def _small_task(rng: random.Random, now: float) -> tuple[str, str, str, str]:
        name, queue = SMALL_TASKS[rng.randrange(len(SMALL_TASKS))]
        return name, repr((rng.randrange(10_000_000),)), "{}", queue

    @staticmethod
    def _failure(rng: random.Random, name: str, worker: _FleetWorker, task_id: str) -> tuple[str, str]:
        """(exception, traceback) as a prefork worker sends them: safe_repr of the exception, and the
        formatted traceback (Python 3.11) through Celery's tracer into the task."""
        if name == AIRFLOW_TASK:
            message = (f"Celery command failed on host: {worker.hostname.split('@', 1)[1]} "
                       f"with celery_task_id {task_id} (PID: {rng.randint(20_000, 60_000)}, Return Code: 1)")
            frames = (
                '  File "/home/airflow/.local/lib/python3.11/site-packages/airflow/providers/celery/executors/'
                'celery_executor_utils.py", line 146, in execute_command\n'
                "    _execute_in_fork(command_to_exec, celery_task_id)\n"
                '  File "/home/airflow/.local/lib/python3.11/site-packages/airflow/providers/celery/executors/'
                'celery_executor_utils.py", line 182, in _execute_in_fork\n'
                "    raise AirflowException(msg)\n"
            )
            return f"AirflowException({message!r})", (
                f"Traceback (most recent call last):\n{CELERY_FRAMES}{frames}"
                f"airflow.exceptions.AirflowException: {message}\n")
        module, function = name.rsplit(".", 1)
        order = rng.randrange(10_000_000)
        line = 40 + rng.randrange(160)
        if rng.random() < 0.5:
            message = f"502 Server Error: Bad Gateway for url: https://payments.internal/v1/charges/{order}"
            return f"HTTPError({message!r})", (
                "Traceback (most recent call last):\n" + CELERY_FRAMES
                + f'  File "/srv/app/{module.replace(".", "/")}.py", line {line}, in {function}\n'
                + "    response = client.post(url, json=payload, timeout=10)\n"
                + "               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
                + '  File "/srv/app/common/http.py", line 77, in post\n'
                + "    response.raise_for_status()\n"
                + '  File "/usr/local/lib/python3.11/site-packages/requests/models.py", line 1024, '
                + "in raise_for_status\n"
                + "    raise HTTPError(http_error_msg, response=self)\n"
                + f"requests.exceptions.HTTPError: {message}\n")
        message = ("could not obtain lock on row in relation \"orders\"\n"
                   f"CONTEXT:  while locking tuple ({order % 9000},{rng.randrange(40)}) in relation \"orders\"\n")
        return f"LockNotAvailable({message!r})", (
            "Traceback (most recent call last):\n" + CELERY_FRAMES
            + f'  File "/srv/app/{module.replace(".", "/")}.py", line {line}, in {function}\n'
            + "    order = Order.objects.select_for_update(nowait=True).get(pk=order_id)\n"
            + "            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
            + '  File "/usr/local/lib/python3.11/site-packages/django/db/backends/utils.py", line 89, in _execute\n'
            + "    return self.cursor.execute(sql, params)\n"
            + "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
            + f"psycopg.errors.LockNotAvailable: {message}")

    # ---------------------------------------------------------------- simulation
    def __iter__(self) -> Iterator[WireMessage]:
        rng = random.Random(self.seed)
        stats = self.stats
        by_type = stats.by_type
        workers = [_FleetWorker(hostname=f"celery@airflow-worker-{i:02d}", pid=2000 + 13 * i,
                                flush_at=rng.randint(1, self.max_batch)) for i in range(self.workers)]
        client_pids = rng.sample(range(100, 60_000), self.clients)
        clients = [_Client(hostname=f"gen{pid}@clienthost", pid=pid) for pid in client_pids]
        heap: list[tuple[float, int, int, int, _FleetTask | None]] = []
        seq = itertools.count()
        hb_step = self.heartbeat_freq / self.workers
        for i in range(self.workers):
            heapq.heappush(heap, (self.start + (i + 0.5) * hb_step, next(seq), _HEARTBEAT, i, None))
        heapq.heappush(heap, (self.start + rng.expovariate(self.rate), next(seq), _SEND, -1, None))
        backlog: deque[_FleetTask] = deque()  # sent while every slot was taken
        cursor = 0  # the broker's round robin over consumers with prefetch room
        sent = 0
        finished = 0
        sending = True
        generated = 0
        flushed_task_events = 0
        mean_batch = (1 + self.max_batch) / 2
        mu = math.log(self.median_runtime_s)
        recent: deque[tuple[str, str]] = deque(maxlen=64)  # (root_id, uuid) of recent application tasks

        def task_event(w: _FleetWorker, etype: str, fields: dict[str, Any], now: float) -> WireMessage | None:
            nonlocal generated
            w.clock += 1
            w.buffer.append({"hostname": w.hostname, "utcoffset": 0, "pid": w.pid, "clock": w.clock, **fields,
                             "timestamp": now, "type": etype})
            by_type[etype] = by_type.get(etype, 0) + 1
            generated += 1
            if len(w.buffer) < w.flush_at:
                return None
            return flush(w)

        def flush(w: _FleetWorker) -> WireMessage:
            nonlocal flushed_task_events
            batch, w.buffer = w.buffer, []
            w.flush_at = rng.randint(1, self.max_batch)
            flushed_task_events += len(batch)
            return stats.record("task.multi", w.hostname, batch, len(batch))

        def assign(task: _FleetTask, now: float) -> bool:
            nonlocal cursor
            for step in range(self.workers):
                index = (cursor + step) % self.workers
                if workers[index].reserved < self.slots:
                    cursor = index + 1
                    workers[index].reserved += 1
                    heapq.heappush(heap, (now + rng.uniform(0.0005, 0.003), next(seq), _RECEIVE, index, task))
                    return True
            return False

        def keep_sending() -> bool:
            foreseen_events = stats.heartbeats + 4 * sent
            if self.target_events is not None and foreseen_events >= self.target_events:
                return False
            if self.target_messages is not None:
                pending = 3 * sent - flushed_task_events  # task events still to come or buffered
                if stats.messages + pending / mean_batch >= self.target_messages:
                    return False
            return True

        while heap:
            now, _, kind, index, task = heapq.heappop(heap)
            self.now = now
            if kind == _HEARTBEAT:
                if not sending and finished == sent:
                    continue  # the stream is over: no more heartbeats
                w = workers[index]
                w.clock += 1
                generated += 1
                by_type["worker-heartbeat"] = by_type.get("worker-heartbeat", 0) + 1
                loadavg = [round(rng.uniform(0.5, 6.0), 2) for _ in range(3)]
                yield stats.record("worker.heartbeat", w.hostname, {
                    "hostname": w.hostname, "utcoffset": 0, "pid": w.pid, "clock": w.clock,
                    "freq": self.heartbeat_freq, "active": w.running, "processed": w.processed,
                    "loadavg": loadavg, **SW_INFO, "timestamp": now, "type": "worker-heartbeat",
                }, 1)
                heapq.heappush(heap, (now + self.heartbeat_freq, next(seq), _HEARTBEAT, index, None))
            elif kind == _SEND:
                if not keep_sending():
                    sending = False
                    continue
                heapq.heappush(heap, (now + rng.expovariate(self.rate), next(seq), _SEND, -1, None))
                client = clients[rng.randrange(len(clients))]
                client.clock += 1
                task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                root_id, parent_id = task_id, None
                pick = rng.random()
                if pick < self.mix[0]:
                    name, args, kwargs, queue = self._airflow_task(rng, now)
                else:
                    if pick < self.mix[0] + self.mix[1]:
                        name, args, kwargs, queue = self._app_task(rng, now)
                    else:
                        name, args, kwargs, queue = self._small_task(rng, now)
                    if recent and rng.random() < 0.2:  # a subtask of a recent one (a chain, a callback)
                        root_id, parent_id = recent[rng.randrange(len(recent))]
                    recent.append((root_id, task_id))
                expires = self._iso(now + 3600) if rng.random() < 0.15 else None
                received = {"uuid": task_id, "name": name, "args": args, "kwargs": kwargs, "root_id": root_id,
                            "parent_id": parent_id, "retries": 0, "eta": None, "expires": expires}
                runtime = min(30.0, max(0.005, rng.lognormvariate(mu, 0.9)))
                task = _FleetTask(task_id, name, runtime=runtime, received=received)
                sent += 1
                generated += 1
                by_type["task-sent"] = by_type.get("task-sent", 0) + 1
                yield stats.record("task.sent", client.hostname, {
                    "hostname": client.hostname, "utcoffset": 0, "pid": client.pid, "clock": client.clock,
                    "uuid": task_id, "root_id": root_id, "parent_id": parent_id, "name": name, "args": args,
                    "kwargs": kwargs, "retries": 0, "eta": None, "expires": expires, "queue": queue,
                    "exchange": queue, "routing_key": queue, "timestamp": now, "type": "task-sent",
                }, 1)
                if not assign(task, now):
                    backlog.append(task)
            elif kind == _RECEIVE:
                assert task is not None
                w = workers[index]
                message = task_event(w, "task-received", task.received, now)
                task.received = {}
                if message is not None:
                    yield message
                heapq.heappush(heap, (now + rng.uniform(0.0002, 0.0015), next(seq), _START, index, task))
            elif kind == _START:
                assert task is not None
                w = workers[index]
                w.running += 1
                task.started_at = now
                message = task_event(w, "task-started", {"uuid": task.uuid}, now)
                if message is not None:
                    yield message
                heapq.heappush(heap, (now + task.runtime, next(seq), _FINISH, index, task))
            else:  # _FINISH
                assert task is not None
                w = workers[index]
                w.running -= 1
                w.reserved -= 1
                w.processed += 1
                finished += 1
                runtime = round(now - task.started_at, 6)
                if rng.random() < self.failure_rate:
                    exception, traceback = self._failure(rng, task.name, w, task.uuid)
                    message = task_event(w, "task-failed", {"uuid": task.uuid, "exception": exception,
                                                            "traceback": traceback}, now)
                else:
                    message = task_event(w, "task-succeeded", {"uuid": task.uuid, "result": "None",
                                                               "runtime": runtime}, now)
                if message is not None:
                    yield message
                if backlog:
                    assign(backlog.popleft(), now)
                if not sending and finished == sent:
                    break
        for w in workers:
            if w.buffer:
                yield flush(w)
        stats.tasks = sent


STREAMS = ("default", "fleet")


def make_stream(kind: str, *, events: int | None, messages: int | None = None, seed: int = 1,
                workers: int = 50, max_batch: int | None = None) -> CeleryEventStream | FleetEventStream:
    """One of `STREAMS` by name, ending after `events` events or `messages` messages (whichever is given)."""
    if kind == "default":
        return CeleryEventStream(target_events=None if messages is not None else events, target_messages=messages,
                                 seed=seed, workers=workers, max_batch=max_batch or 3)
    if kind == "fleet":
        return FleetEventStream(target_events=None if messages is not None else events, target_messages=messages,
                                seed=seed, workers=workers, max_batch=max_batch or 4)
    raise ValueError(f"unknown stream {kind!r}: one of {', '.join(STREAMS)}")
