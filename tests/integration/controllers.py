"""Running a real Controller inside a test (its own task group, torn down with the test)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from drainctl.app import Controller


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
