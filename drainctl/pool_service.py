"""The pool service: the pools' configuration, its reload and rollback, and the workers drainctl runs.

It keeps what the planner needs to know about pools (their targets, the spec of every version it ran,
the pins, in the journal too) and the handle of each worker a runtime started or adopted. Reload and
rollback are requests the reducer hands over; starting a worker is a command the executor hands over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from drainctl import config as config_module
from drainctl.config import PoolSettings, Settings
from drainctl.core.commands import StartWorker
from drainctl.core.drain import DrainPolicy
from drainctl.core.policy import PolicyOverrides
from drainctl.core.rollout import Fleet, PoolTarget
from drainctl.errors import DrainctlError
from drainctl.inputs import Input, ReloadRequested, RollbackRequested, StartFailedIn, WorkerStartedIn
from drainctl.journal import Journal
from drainctl.pools import runtime_names, spec_for, target_of
from drainctl.runtime.base import WorkerHandle, WorkerRuntime

log = structlog.get_logger("drainctl")


class PoolService:
    def __init__(
        self, settings: Settings, fleet: Fleet, runtimes: dict[str, WorkerRuntime], *,
        config_path: Path | None, file_settings: Settings,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.runtimes = runtimes
        self.config_path = config_path
        # What the file said at start, before command-line overrides: a reload compares its
        # sections read only at start with these.
        self.file_settings = file_settings
        self.targets: dict[str, PoolTarget] = {}
        self.specs: dict[tuple[str, str], PoolSettings] = {}
        self.journal: Journal | None = None
        self.reloads: dict[str, int] = {"applied": 0, "rejected": 0}
        # Who asked for the pools as they are now: rollouts record it.
        self.requested_by = "config"
        # Workers this controller started (or adopted): it can stop them and sees them exit.
        self.managed: dict[str, WorkerHandle] = {}

    # ------------------------------------------------------------------ start-up
    def open_journal(self) -> None:
        """Resume from the journal: cancels under way, pins, and the spec of every version run before."""
        if self.journal is not None:
            return
        self.journal = Journal(self.settings.controller.state_dir / "journal.sqlite")
        self.fleet.cancelled.update(self.journal.cancelled())
        self.fleet.pins.update(self.journal.pins())
        self.fleet.canary.resumed.update(self.journal.canary())
        for engine, state in self.journal.engines().items():
            if state in ("cordoned", "evacuating"):
                self.fleet.engines.states[engine] = state  # type: ignore[assignment]
        for (pool, version), spec in self.journal.specs().items():
            try:
                self.specs[(pool, version)] = PoolSettings.model_validate(spec)
            except ValueError:
                log.warning("journal holds a pool spec this version cannot read; ignored", pool=pool,
                            version=version)

    def apply(self, settings: Settings) -> None:
        self.targets = {p.name: target_of(p, engines=settings.engines_of(p)) for p in settings.pool}
        for pool in settings.pool:
            self.specs[(pool.name, pool.target_version)] = pool
            if self.journal is not None:
                self.journal.save_spec(pool.name, pool.target_version, pool.model_dump(mode="json"))
        missing = {name for p in settings.pool for name in runtime_names(settings, p)} - set(self.runtimes)
        if missing:
            raise DrainctlError(f"pools need the {', '.join(sorted(missing))} runtime, which is not set up")

    # ------------------------------------------------------------------ requests
    def reload(self, item: ReloadRequested) -> None:
        """Re-read the config file. An invalid file changes nothing; the answer says why."""
        answer = item.answer
        try:
            new = self._load_and_apply()
        except DrainctlError as exc:
            self.reloads["rejected"] += 1
            log.error("configuration reload rejected; the running configuration stays", error=str(exc),
                      requested_by=item.requested_by)
            answer.error = str(exc)
        else:
            answer.detail = self._reloaded(new, item.requested_by)
        answer.done.set()

    def _load_and_apply(self) -> Settings:
        if self.config_path is None:
            raise DrainctlError("drainctl runs without --config: there is no file to reload")
        new = config_module.load(self.config_path)
        uncovered = config_module.uncovered_queues(self.settings, new)
        if uncovered:
            raise DrainctlError(f"{self.config_path}: refused: no pool would consume {', '.join(uncovered)} "
                                "any more; keep a pool on each queue (or stop its workers by hand first)")
        self.apply(new)
        return new

    def _reloaded(self, new: Settings, requested_by: str) -> dict[str, Any]:
        before = {p.name: p.target_version for p in self.settings.pool}
        changed = [p.name for p in new.pool if p.target_version != before.get(p.name)]
        # Connections, listeners and the controller's identity are set up once: say so rather than
        # let an edit look applied.
        restart_needed = [name for name in type(new).model_fields
                          if name != "pool" and getattr(new, name) != getattr(self.file_settings, name)]
        self.settings = self.settings.model_copy(update={"pool": new.pool})
        self.reloads["applied"] += 1
        self.requested_by = requested_by
        log.info("configuration reloaded", requested_by=requested_by, pools_changed=changed)
        if restart_needed:
            log.warning("configuration reloaded: pools only; the changes to these sections take effect when "
                        "drainctl restarts", sections=restart_needed)
        return {"pools": {name: t.version for name, t in self.targets.items()},
                "changed": changed, "restart_needed": restart_needed}

    def rollback(self, item: RollbackRequested) -> None:
        """Pin a pool to an earlier version (the one before its last successful rollout, unless named)."""
        answer = item.answer
        target = self.targets.get(item.pool)
        if target is None:
            answer.error = f"no pool named {item.pool!r} (pools: {', '.join(sorted(self.targets)) or 'none'})"
        else:
            version = item.version if item.version is not None else self._previous_version(item.pool, target)
            if version is None:
                answer.error = (f"pool {item.pool!r}: no earlier version to roll back to "
                                f"(it runs {self.fleet.target(target)})")
            elif (item.pool, version) not in self.specs:
                answer.error = f"pool {item.pool!r}: version {version!r} is unknown (never run by this controller)"
            else:
                self.fleet.rollback(target, version, item.requested_by)
                self.requested_by = item.requested_by
                if self.journal is not None:
                    self.journal.save_pins(self.fleet.pins)
                log.info("rollback requested", pool=item.pool, to_version=version, requested_by=item.requested_by)
                answer.detail = {"pool": item.pool, "version": version, "pinned": True}
        answer.done.set()

    def _previous_version(self, pool: str, target: PoolTarget) -> str | None:
        current = self.fleet.target(target)
        previous = [r.from_version for r in reversed(self.fleet.history)
                    if r.pool == pool and r.to_version == current and r.outcome == "succeeded"]
        if not previous and self.journal is not None:
            previous = [r["from_version"] for r in self.journal.history()
                        if r["pool"] == pool and r["to_version"] == current and r["outcome"] == "succeeded"]
        return previous[0] if previous else None

    def drain_policy(self, hostname: str, overrides: DrainPolicy | PolicyOverrides) -> DrainPolicy:
        """A requested drain's policy: as given, or the caller's overrides on the worker's pool policy."""
        if isinstance(overrides, DrainPolicy):
            return overrides
        member = self.fleet.members.get(hostname)
        target = self.targets.get(member.pool) if member is not None else None
        return overrides.over(target.drain_policy if target is not None else DrainPolicy())

    def history(self, limit: int) -> list[dict[str, Any]]:
        return self.journal.history(limit) if self.journal is not None else []

    # ------------------------------------------------------------------ workers
    async def start_pool_worker(self, command: StartWorker) -> Input:
        pool = self.specs.get((command.pool, command.version))
        if pool is None:
            return StartFailedIn(command.hostname, f"no spec known for version {command.version}")
        wanted = f"docker:{command.engine}" if command.engine is not None else pool.runtime
        runtime = self.runtimes.get(wanted)
        if runtime is None:
            return StartFailedIn(command.hostname, f"the {wanted} runtime is not set up")
        try:
            handle = await runtime.start(spec_for(pool, command.version, command.hostname, quiet=command.quiet))
        except DrainctlError as exc:
            return StartFailedIn(command.hostname, str(exc))
        return WorkerStartedIn(handle)

    def started(self, handle: WorkerHandle, now: float) -> None:
        """A runtime started or adopted a worker: drainctl owns it, and a pool's worker joins its pool."""
        self.managed[handle.hostname] = handle
        if handle.pool in self.targets or (handle.pool, handle.version) in self.specs:
            self.fleet.adopt(handle.hostname, handle.pool, handle.version, now)

    def exited(self, handle: WorkerHandle) -> None:
        if self.managed.get(handle.hostname) == handle:
            del self.managed[handle.hostname]
        if self.journal is not None:
            self.journal.forget(handle.hostname)
