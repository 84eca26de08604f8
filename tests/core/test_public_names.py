"""The names code outside the core imports from these modules stay importable there, wherever they live."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "drainctl.core.model": ["REMOTE_CONTROL_CHECK", "Cluster", "Notice", "Task", "TaskEvents", "TaskState", "Worker",
                            "WorkerState"],
    "drainctl.core.drain": ["CONFIRM_REASON", "DEFAULT_CONSUMER_TIMEOUT_S", "DURATION_BUCKETS", "ConsumerTimeout",
                            "Drain", "DrainBook", "DrainPolicy", "DrainRefused", "Outcome", "Phase"],
    "drainctl.core.rollout": ["Failure", "Fleet", "Member", "Pin", "PoolTarget", "Rollout"],
    "drainctl.core.entrypoint_drain": ["Action", "EntrypointDrain", "Phase", "WorkerCommand", "held",
                                       "worker_command"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_are_exported_where_they_were(module: str) -> None:
    loaded = importlib.import_module(module)
    for name in PUBLIC[module]:
        assert name in loaded.__all__ and hasattr(loaded, name), (module, name)


def test_the_held_rule_is_one_function() -> None:
    from drainctl.core import entrypoint_drain, worker

    assert entrypoint_drain.held is worker.held
