"""Canary rollouts in the planner: steps, holds, verdicts from task outcomes, operator decisions, the journal."""

from __future__ import annotations

from dataclasses import replace

from drainctl.core.canary import CanaryBook, CanaryPolicy, step_sizes
from drainctl.core.commands import JournalCanary
from tests.core.world import World

POLICY = CanaryPolicy(steps=(1, 0.5), min_tasks=20, max_wait_s=60, bake_s=5)


class CanaryWorld(World):
    """Pool "p" of 4 with a canary policy. Every step, each serving worker ends `per_worker` tasks "t.a"
    (`runtime` s each); a worker of a version in `failing` fails one in `fail_every`, and one in `slow`
    runs `slow_factor` times longer."""

    def __init__(self, policy: CanaryPolicy = POLICY) -> None:
        super().__init__(replicas=4)
        self.pool = replace(self.pool, canary=policy, cap=5)
        self.failing: set[str] = set()
        self.slow: set[str] = set()
        self.fail_every = 5
        self.slow_factor = 3.0
        self.per_worker = 2
        self.ended = 0
        self.ended_by: dict[str, int] = {}
        self.new_at_most = 0  # target-version workers alive at most, while the rollout is under way

    def step(self, dt: float = 1.0) -> None:
        for member in self.fleet.of_pool("p"):
            if member.ready_at is None or member.hostname in self.drains.active:
                continue
            for _ in range(self.per_worker):
                self.ended += 1
                mine = self.ended_by[member.version] = self.ended_by.get(member.version, 0) + 1
                failed = member.version in self.failing and mine % self.fail_every == 0
                runtime = 1.0 + (self.ended % 7) / 10
                if member.version in self.slow:
                    runtime *= self.slow_factor
                self.fleet.canary.record("p", member.version, "t.a", "failed" if failed else "succeeded", runtime)
        super().step(dt)
        if self.fleet.rollouts:
            self.new_at_most = max(self.new_at_most, sum(1 for m in self.fleet.of_pool("p") if m.version == "v2"))

    def roll_to(self, version: str) -> None:
        self.pool = replace(self.pool, version=version)

    def outcome(self) -> str | None:
        return self.fleet.history[-1].outcome if self.fleet.history else None


def started() -> CanaryWorld:
    world = CanaryWorld()
    world.run(lambda: world.settled("v1"))
    world.min_consumers = None
    return world


def test_steps_are_counts_or_shares_increasing_to_the_whole_pool() -> None:
    assert step_sizes(POLICY, 4) == [1, 2, 4]
    assert step_sizes(POLICY, 2) == [1, 2]
    assert step_sizes(POLICY, 1) == [1]
    assert step_sizes(CanaryPolicy(steps=(3, 2, 0.25)), 10) == [3, 10]
    assert step_sizes(CanaryPolicy(steps=(0.01,)), 3) == [1, 3]


def test_a_healthy_version_is_promoted_through_every_step_with_a_hold_at_each() -> None:
    world = started()
    world.roll_to("v2")
    sizes_seen: list[int] = []

    def note() -> bool:
        hold = world.fleet.canary.holds.get("p")
        if hold is not None and hold.started_at is not None:
            size = sum(1 for m in world.fleet.of_pool("p") if m.version == "v2" and m.ready_at is not None)
            if not sizes_seen or sizes_seen[-1] != size:
                sizes_seen.append(size)
        return world.outcome() == "succeeded"

    world.run(note, steps=200)
    assert sizes_seen == [1, 2]  # held at 1 new worker, then at 2; the last step (4) needs no hold
    assert world.settled("v2") and world.min_consumers is not None and world.min_consumers >= 1
    assert sum(1 for c in world.log if isinstance(c, JournalCanary)) == 2
    assert "p" not in world.fleet.canary.holds and world.fleet.canary.journal_rows() == {}


def test_a_version_that_fails_a_fifth_of_its_tasks_is_aborted_at_the_first_step() -> None:
    world = started()
    world.failing.add("v2")
    world.roll_to("v2")
    world.run(lambda: world.outcome() == "failed", steps=100)
    assert world.new_at_most == 1
    detail = world.fleet.history[-1].detail
    assert detail.startswith("aborted, back to v1: canary analysis: t.a: ") and "failed on the new version" in detail
    world.run(lambda: world.settled("v1"), steps=100)  # the new worker drained, the pool whole on v1 again
    assert world.min_consumers is not None and world.min_consumers >= 1


def test_a_version_three_times_slower_is_aborted() -> None:
    world = started()
    world.slow.add("v2")
    world.roll_to("v2")
    world.run(lambda: world.outcome() == "failed", steps=100)
    assert "runtime p50 3.0x" in world.fleet.history[-1].detail and world.new_at_most == 1


def test_too_few_tasks_by_max_wait_do_what_on_timeout_says() -> None:
    for on_timeout, expected in (("abort", "failed"), ("promote", "succeeded")):
        world = started()
        world.pool = replace(world.pool, canary=replace(POLICY, min_tasks=10_000, on_timeout=on_timeout))
        world.roll_to("v2")
        world.run(lambda w=world, e=expected: w.outcome() == e, steps=400)  # type: ignore[misc]
        if on_timeout == "abort":
            assert "of 10000 tasks on the new version after 60s (on_timeout = abort)" in world.fleet.history[-1].detail
    world = started()
    world.pool = replace(world.pool, canary=replace(POLICY, min_tasks=10_000, on_timeout="hold"))
    world.roll_to("v2")
    for _ in range(150):
        world.step()
    assert world.fleet.rollouts and world.new_at_most == 1  # still holding at the first step


def test_an_operator_promotes_or_aborts_a_hold() -> None:
    world = started()
    world.pool = replace(world.pool, canary=replace(POLICY, min_tasks=10_000))
    assert world.fleet.canary.decide("p", "promote", "ops") == "pool 'p' has no canary rollout under way"
    world.roll_to("v2")
    world.run(lambda: world.fleet.canary.holds.get("p") is not None
              and world.fleet.canary.holds["p"].started_at is not None)
    assert world.fleet.canary.decide("p", "promote", "cli:ops") is None
    world.run(lambda: world.outcome() == "succeeded")
    world.roll_to("v3")
    world.run(lambda: world.fleet.canary.holds.get("p") is not None
              and world.fleet.canary.holds["p"].started_at is not None)
    assert world.fleet.canary.decide("p", "abort", "cli:ops") is None
    world.run(lambda: world.outcome() == "failed")
    assert world.fleet.history[-1].detail == "aborted, back to v2: canary analysis: aborted by cli:ops"


def test_a_restarted_controller_resumes_at_the_journaled_step() -> None:
    book = CanaryBook()
    book.resumed["p"] = ("v2", 1, False)
    assert book.allowed("p", "v2", POLICY, 4, ready_new=0, now=0.0).allowed == 2
    assert book.holds["p"].detail == "resumed from the journal"
    other = CanaryBook()
    other.resumed["p"] = ("v9", 1, True)  # another target now: a new canary from the first step
    assert other.allowed("p", "v2", POLICY, 4, ready_new=0, now=0.0).allowed == 1
    promoted = CanaryBook()
    promoted.resumed["p"] = ("v2", 0, True)
    gate = promoted.allowed("p", "v2", POLICY, 4, ready_new=1, now=0.0)
    assert (gate.allowed, gate.journal) == (4, True)


def test_only_task_ends_within_a_hold_count_and_a_retry_or_revoke_never() -> None:
    book = CanaryBook()
    book.record("p", "v2", "t.a", "succeeded", 1.0)  # no hold
    book.allowed("p", "v2", POLICY, 4, ready_new=0, now=0.0)
    book.record("p", "v2", "t.a", "succeeded", 1.0)  # the step's worker is not ready: no window yet
    book.allowed("p", "v2", POLICY, 4, ready_new=1, now=1.0)
    for outcome in ("retried", "revoked", "succeeded", "failed", "rejected"):
        book.record("p", "v2", None, outcome, 1.0)
    book.record("p", "v1", "t.a", "succeeded", None)
    hold = book.holds["p"]
    assert (hold.new["(unnamed)"].succeeded, hold.new["(unnamed)"].failed, hold.new["(unnamed)"].runtimes) == (
        1, 2, [1.0])
    assert (hold.old["t.a"].succeeded, hold.old["t.a"].runtimes, hold.seen()) == (1, [], 3)
