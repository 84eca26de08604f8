"""Running a real Controller inside a test (its own task group, torn down with the test)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from drainctl.app import Controller
from drainctl.runtime.process import ProcessRuntime


@asynccontextmanager
async def synced(ctl: Controller, timeout_s: float = 20) -> AsyncIterator[Controller]:
    """Run `ctl` until the block ends; enter once its start-up reconcile has been merged."""
    async with anyio.create_task_group() as tg:
        await tg.start(ctl.run)
        try:
            await ctl.wait_for(ctl.synced.is_set, timeout_s)
            yield ctl
        finally:
            tg.cancel_scope.cancel()


async def stop_workers(state_dir: Path, controller_id: str, timeout_s: float = 20) -> None:
    """Stop every worker a controller started (they outlive it on purpose), all at once, by PID."""
    runtime = ProcessRuntime(state_dir, controller_id)
    with anyio.move_on_after(timeout_s + 40, shield=True):
        async with anyio.create_task_group() as tg:
            for handle in await runtime.adopt():
                tg.start_soon(runtime.stop, handle, timeout_s)
