from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # aio-pika and aiodocker are asyncio libraries.
    return "asyncio"
