"""The entrypoint's pure part: the worker's node name, and the drain of that one worker."""

from __future__ import annotations

import pytest

from drainctl.core.entrypoint_drain import (
    Action,
    EntrypointDrain,
    Phase,
    expand_nodename,
    held,
    worker_command,
)
from drainctl.core.snapshot import TaskState
from drainctl.core.worker import Task, Worker, WorkerState

HOST = "box.example.com"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("w1@%h", "w1@box.example.com"),
        ("w1@%n", "w1@box"),
        ("w1@%d", "w1@example.com"),
        ("w1", "celery@w1"),
        ("w1@", "w1@box.example.com"),
        ("@other", "celery@other"),
        ("w%i%I@%h", "w0@box.example.com"),
        ("a%%b@x", "a%b@x"),
    ],
)
def test_node_names_expand_like_celery(raw: str, expected: str) -> None:
    assert expand_nodename(raw, HOST) == expected


def test_an_unknown_format_key_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown format key %z"):
        expand_nodename("w1@%z", HOST)


@pytest.mark.parametrize(
    "argv",
    [
        ["celery", "worker", "-n", "w1@%h", "-Q", "q"],
        ["celery", "worker", "--hostname", "w1@%h"],
        ["celery", "worker", "--hostname=w1@%h"],
        ["celery", "worker", "-nw1@%h"],
        ["celery", "worker", "-n", "first@x", "-n", "w1@%h"],
    ],
)
def test_the_node_name_is_read_from_the_command(argv: list[str]) -> None:
    command = worker_command(argv, HOST)
    assert command == type(command)(tuple(argv), "w1@box.example.com", False)


def test_a_missing_node_name_is_injected() -> None:
    command = worker_command(["celery", "worker"], HOST)
    assert command.argv == ("celery", "worker", "-n", f"celery@{HOST}")
    assert command.nodename == f"celery@{HOST}"
    assert command.injected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no worker command"),
        (["celery", "worker", "-n"], "-n needs a value"),
        (["celery", "worker", "--hostname="], "is empty"),
    ],
)
def test_bad_commands_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        worker_command(argv, HOST)


def worker(*states: TaskState, queues: tuple[str, ...] | None = ("q",), state: WorkerState = WorkerState.ONLINE
           ) -> Worker:
    w = Worker(hostname="w1@box", first_seen=0.0, last_seen=0.0, state=state, queues=queues)
    for i, s in enumerate(states):
        w.tasks[f"t{i}"] = Task(uuid=f"t{i}", name="app.sleep", state=s, received_at=0.0)
    return w


def test_held_counts_running_and_prefetched_not_eta_tasks() -> None:
    assert held(None) is None
    assert held(worker()) == ()
    assert held(worker(TaskState.SCHEDULED)) == ()
    assert held(worker(TaskState.RUNNING, TaskState.RESERVED, TaskState.SCHEDULED)) == ("t0", "t1")


def test_a_drain_waits_for_the_model_then_a_confirmation_then_stops() -> None:
    flow = EntrypointDrain()
    assert flow.observed(worker()) is Action.NOTHING  # no SIGTERM yet
    assert flow.confirmed(True, worker()) is Action.NOTHING
    assert flow.sigterm() is Action.DRAIN
    assert flow.phase is Phase.DRAINING
    assert flow.observed(None) is Action.NOTHING  # not known yet
    assert flow.observed(worker(TaskState.RUNNING, TaskState.RESERVED)) is Action.NOTHING
    assert flow.observed(worker(TaskState.SCHEDULED)) is Action.CONFIRM
    assert flow.phase is Phase.CONFIRMING
    # The inspect found a task the events had not told yet: back to waiting.
    assert flow.confirmed(True, worker(TaskState.RESERVED, queues=())) is Action.NOTHING
    assert flow.phase is Phase.DRAINING
    assert flow.observed(worker(queues=())) is Action.CONFIRM
    # Still consuming a queue (a lost cancel_consumer): not done.
    assert flow.confirmed(True, worker(queues=("q",))) is Action.NOTHING
    assert flow.observed(worker(queues=())) is Action.CONFIRM
    assert flow.confirmed(True, worker(queues=None)) is Action.STOP
    assert flow.phase is Phase.STOPPING
    assert flow.observed(worker()) is Action.NOTHING
    assert flow.deadline() is Action.NOTHING
    assert flow.failed() is Action.NOTHING


def test_unanswered_confirmations_are_retried_then_the_worker_is_stopped_anyway() -> None:
    flow = EntrypointDrain(max_unanswered=2)
    flow.sigterm()
    assert flow.observed(worker(queues=())) is Action.CONFIRM
    assert flow.confirmed(False, None) is Action.NOTHING
    assert flow.phase is Phase.DRAINING
    assert flow.observed(worker(queues=())) is Action.CONFIRM
    assert flow.confirmed(True, worker(TaskState.RUNNING, queues=())) is Action.NOTHING
    assert flow.unanswered == 0  # an answer resets the count
    assert flow.observed(worker(queues=())) is Action.CONFIRM
    assert flow.confirmed(False, None) is Action.NOTHING
    assert flow.observed(worker(queues=())) is Action.CONFIRM
    assert flow.confirmed(False, None) is Action.FORWARD
    assert flow.phase is Phase.STOPPING


def test_a_worker_shutting_down_on_its_own_is_left_to_exit() -> None:
    flow = EntrypointDrain()
    flow.sigterm()
    assert flow.observed(worker(TaskState.RUNNING, state=WorkerState.OFFLINE)) is Action.NOTHING
    assert flow.phase is Phase.STOPPING


def test_failures_deadlines_and_a_second_sigterm_stop_the_worker_without_a_drain() -> None:
    flow = EntrypointDrain()
    assert flow.failed() is Action.NOTHING
    assert flow.deadline() is Action.NOTHING
    flow.sigterm()
    assert flow.failed() is Action.FORWARD

    flow = EntrypointDrain()
    flow.sigterm()
    assert flow.deadline() is Action.STOP
    assert flow.phase is Phase.STOPPING
    assert flow.sigterm() is Action.FORWARD

    flow = EntrypointDrain()
    flow.sigterm()
    assert flow.sigterm() is Action.FORWARD
