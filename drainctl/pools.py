"""From a pool's config to what the core plans with and what a runtime starts."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from drainctl.config import PoolSettings, Settings
from drainctl.core.drain import DrainPolicy
from drainctl.core.quiet import standby_queue
from drainctl.core.rollout import PoolTarget
from drainctl.core.scaling import ScalingPolicy
from drainctl.runtime.base import WorkerSpec


def target_of(pool: PoolSettings, host: str | None = None, engines: tuple[str, ...] = ()) -> PoolTarget:
    return PoolTarget(
        name=pool.name,
        queues=tuple(pool.queues),
        replicas=pool.replicas,
        # Spread over engines, max_per_host caps each engine (`per_engine_cap`), not the pool.
        cap=pool.largest + pool.surge if engines else pool.cap,
        engines=engines,
        per_engine_cap=pool.max_per_host if engines else None,
        version=pool.target_version,
        ready_timeout_s=pool.ready_timeout_s,
        drain_policy=DrainPolicy(deadline_s=pool.drain_deadline_s, on_deadline=pool.on_drain_deadline,
                                 stop_timeout_s=pool.stop_timeout_s, retire_grace_s=pool.retire_grace_s),
        host=host or socket.gethostname(),
        quiet_start=pool.quiet_start,
        scaling=scaling_of(pool),
        surge=pool.surge,
        canary=pool.canary.policy() if pool.canary is not None else None,
    )


def scaling_of(pool: PoolSettings) -> ScalingPolicy | None:
    if pool.min_replicas is None or pool.max_replicas is None:
        return None
    return ScalingPolicy(
        min_replicas=pool.min_replicas, max_replicas=pool.max_replicas, concurrency=pool.concurrency,
        target_backlog_per_slot=pool.target_backlog_per_slot, scale_out_cooldown_s=pool.scale_out_cooldown_s,
        scale_in_cooldown_s=pool.scale_in_cooldown_s, hysteresis=pool.scale_in_hysteresis,
    )


def runtime_names(settings: Settings, pool: PoolSettings) -> tuple[str, ...]:
    """The runtimes a pool's workers run on: `docker:NAME` for each engine it spreads over, else its runtime."""
    engines = settings.engines_of(pool)
    return tuple(f"docker:{e}" for e in engines) if engines else (pool.runtime,)


def start_queues(pool: PoolSettings, hostname: str, *, quiet: bool) -> tuple[str, ...]:
    """What a new worker consumes at start: its standby queue alone when it starts quiet."""
    return (standby_queue(hostname),) if quiet else tuple(pool.queues)


def command_for(pool: PoolSettings, version: str, hostname: str, *, quiet: bool = False) -> tuple[str, ...]:
    """Fill the command template; without {hostname} in it, append `-n NAME -Q QUEUES -c N`."""
    queues = ",".join(start_queues(pool, hostname, quiet=quiet))
    values: Mapping[str, Any] = {
        "hostname": hostname, "queues": queues, "concurrency": pool.concurrency,
        "pool": pool.name, "version": version,
    }
    argv = [arg.format_map(values) for arg in pool.command]
    if not any("{hostname}" in arg for arg in pool.command):
        argv += ["-n", hostname, "-Q", queues, "-c", str(pool.concurrency)]
    return tuple(argv)


def spec_for(pool: PoolSettings, version: str, hostname: str, *, quiet: bool = False) -> WorkerSpec:
    return WorkerSpec(
        hostname=hostname,
        pool=pool.name,
        version=version,
        queues=start_queues(pool, hostname, quiet=quiet),
        command=command_for(pool, version, hostname, quiet=quiet),
        env=dict(pool.env),
        image=pool.image,
        stop_timeout_s=pool.stop_timeout_s,
        network_mode=pool.network_mode,
        binds=tuple(pool.binds),
        cwd=pool.cwd,
    )
