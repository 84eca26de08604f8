"""A pool spread over three real Docker engines, each its own dockerd (own data-root and exec-root) listening
with TLS on its own loopback address; workers with host networking. The pool spreads where it has fewest,
never above max_per_host on any engine, and rolls out under load with 0 lost, 0 duplicated, 0 interrupted."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from celery import Celery

from drainctl import http
from drainctl.app import Controller
from drainctl.core.placement import engine_of
from drainctl.metrics import exposition, registry_for
from drainctl.runtime.base import LABEL_CONTROLLER
from drainctl.runtime.engines import docker_runtimes
from tests.helpers import read_records
from tests.integration.conftest import REPO_ROOT
from tests.integration.controllers import TOKEN, synced
from tests.integration.docker_support import IMAGE, host_binds
from tests.integration.pools import ConsumerLog, PoolHarness, pool_at, toml_list
from tests.integration.private_dockerd import PrivateDockerd, PrivateDockerdError
from tests.integration.tasks import all_ended, send
from tests.integration.tls_certs import TlsMaterial, make_tls_material

pytestmark = pytest.mark.anyio

ADDRESSES = {"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"}
REPLICAS = 4
PER_ENGINE = 2


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[PrivateDockerd, str, TlsMaterial]]]:
    """name -> (its dockerd, its tcp:// address, its TLS files)."""
    def unavailable(reason: str) -> None:
        message = f"no Docker engines can be started: {reason}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    if shutil.which("dockerd") is None or shutil.which("openssl") is None:
        unavailable("`dockerd` and `openssl` are needed; run `bash scripts/dockerd.sh` as root")
    if os.geteuid() != 0:
        unavailable("dockerd needs root")
    started: dict[str, tuple[PrivateDockerd, str, TlsMaterial]] = {}
    try:
        for name, address in ADDRESSES.items():
            tls = make_tls_material(tmp_path_factory.mktemp(f"tls-{name}"), address)
            port = free_port(address)
            engine = PrivateDockerd(tmp_path_factory.mktemp(f"dockerd-{name}"), extra_args=(
                f"--host=tcp://{address}:{port}", "--tlsverify", f"--tlscacert={tls.ca}",
                f"--tlscert={tls.server_cert}", f"--tlskey={tls.server_key}"))
            try:
                engine.__enter__()
            except PrivateDockerdError as exc:
                unavailable(f"a private dockerd did not start: {exc}")
                raise
            started[name] = (engine, f"tcp://{address}:{port}", tls)
        yield started
    finally:
        for engine, _, _ in started.values():
            engine.close()


def write_pool(harness: PoolHarness, version: str, engines: dict[str, tuple[PrivateDockerd, str, TlsMaterial]]) -> None:
    binds = [*host_binds(), f"{harness.records}:{harness.records}:rw"]
    harness.write(version)
    text = harness.path.read_text().replace("replicas = 3", f"replicas = {REPLICAS}\nmax_per_host = {PER_ENGINE}")
    text += f'runtime = "docker"\nimage = "{IMAGE}"\nbinds = {toml_list(binds)}\n'
    for name, (_, url, tls) in engines.items():
        text += (f'\n[[docker.engine]]\nname = "{name}"\nhost = "{url}"\nca_file = "{tls.ca}"\n'
                 f'cert_file = "{tls.client_cert}"\nkey_file = "{tls.client_key}"\n')
    harness.path.write_text(text)


def running_per_engine(engines: dict[str, tuple[PrivateDockerd, str, TlsMaterial]], controller_id: str
                       ) -> dict[str, int]:
    """Each engine's own count of this controller's running containers."""
    counts = {}
    for name, (engine, _, _) in engines.items():
        out = engine.docker("ps", "-q", "--filter", f"label={LABEL_CONTROLLER}={controller_id}").stdout
        counts[name] = len(out.split())
    return counts


async def test_a_pool_spread_over_three_engines_rolls_out_under_load_within_each_engines_cap(
    engines: dict[str, tuple[PrivateDockerd, str, TlsMaterial]], broker_url: str, rabbit_vhost: str,
    celery_app: Celery, tmp_path: Path,
) -> None:
    harness = PoolHarness(tmp_path, broker_url)
    write_pool(harness, "v1", engines)
    settings = harness.settings()
    runtimes = docker_runtimes(settings)
    assert sorted(runtimes) == ["docker:a", "docker:b", "docker:c"]
    ctl = Controller(settings, broker_url, runtimes=dict(runtimes), config_path=harness.path)
    peak: Counter[str] = Counter()

    def within_caps() -> None:
        alive = Counter(engine_of(m.hostname) for m in ctl.fleet.of_pool("p"))
        for name, count in alive.items():
            peak[name] = max(peak[name], count)

    sent: list[str] = []
    try:
        async with synced(ctl, 60):
            await ctl.wait_for(lambda: (within_caps(), pool_at(ctl, "v1", REPLICAS))[1], 120)
            spread = Counter(engine_of(m.hostname) for m in ctl.fleet.of_pool("p"))
            assert sorted(spread.values()) == [1, 1, 2] and set(spread) == set(ADDRESSES), spread
            assert running_per_engine(engines, harness.controller_id) == dict(spread)
            log = ConsumerLog(urllib.parse.unquote(rabbit_vhost), harness.queue)
            async with anyio.create_task_group() as tg:
                await tg.start(log.run)

                async def load() -> None:
                    with anyio.move_on_after(150):
                        for i in range(600):
                            sent.append(await send(celery_app, harness.queue, 0.2 + (i % 5) * 0.3))
                            await anyio.sleep(0.1)

                tg.start_soon(load)
                write_pool(harness, "v2", engines)
                await ctl.reload("test")
                await ctl.wait_for(lambda: (within_caps(), pool_at(ctl, "v2", REPLICAS)
                                            and bool(ctl.fleet.history))[1], 180)
                tg.cancel_scope.cancel()
            await all_ended(harness.records, sent)
            assert ctl.fleet.history[-1].outcome == "succeeded"
            assert log.minimum(initial=REPLICAS) >= 1, log.events
            assert max(peak.values()) <= PER_ENGINE, peak
            final = Counter(engine_of(m.hostname) for m in ctl.fleet.of_pool("p"))
            assert sorted(final.values()) == [1, 1, 2], final
    finally:
        for engine, _, _ in engines.values():
            ids = engine.docker("ps", "-aq", "--filter", f"label={LABEL_CONTROLLER}={harness.controller_id}").stdout
            if ids.split():
                engine.docker("rm", "-f", *ids.split(), check=False)
        for runtime in runtimes.values():
            await runtime.aclose()
    records = read_records(harness.records)
    starts = Counter(r["uuid"] for r in records if r["event"] == "start")
    ends = {r["uuid"] for r in records if r["event"] == "end"}
    assert len(sent) >= 10
    assert [u for u in sent if starts[u] != 1] == [], "lost or duplicated"
    assert [u for u in sent if u not in ends] == [], "interrupted"
    hosts = {r["hostname"] for r in records}
    assert {h.rpartition("@")[2] for h in hosts} <= set(ADDRESSES), json.dumps(sorted(hosts))


def evacuate_cli(url: str, engine: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DRAINCTL_API_TOKEN": TOKEN, "USER": "ops"}
    return subprocess.run([sys.executable, "-m", "drainctl", "evacuate", engine, "--wait", "--timeout", "150",
                           "--url", url], capture_output=True, text=True, timeout=180, env=env, cwd=REPO_ROOT)


async def test_evacuating_an_engine_under_load_moves_its_workers_surge_first_and_interrupts_nothing(
    engines: dict[str, tuple[PrivateDockerd, str, TlsMaterial]], broker_url: str, rabbit_vhost: str,
    celery_app: Celery, tmp_path: Path,
) -> None:
    harness = PoolHarness(tmp_path, broker_url)
    write_pool(harness, "v1", engines)
    runtimes = docker_runtimes(harness.settings())
    ctl = Controller(harness.settings(), broker_url, runtimes=dict(runtimes), config_path=harness.path)
    peak: Counter[str] = Counter()

    def within_caps() -> None:
        for name, count in Counter(engine_of(m.hostname) for m in ctl.fleet.of_pool("p")).items():
            peak[name] = max(peak[name], count)

    sent: list[str] = []
    try:
        async with synced(ctl, 60):
            runner = await http.start(ctl, "127.0.0.1", 0, TOKEN)
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            try:
                await ctl.wait_for(lambda: (within_caps(), pool_at(ctl, "v1", REPLICAS))[1], 120)
                on_a = ctl.fleet.engines.workers_on("a", ctl.fleet.members.values())
                assert len(on_a) == 2, on_a
                log = ConsumerLog(urllib.parse.unquote(rabbit_vhost), harness.queue)
                async with anyio.create_task_group() as tg:
                    await tg.start(log.run)

                    async def load() -> None:
                        with anyio.move_on_after(150):
                            for i in range(600):
                                # 2.5 tasks/s of 1.5 s on average: the 4 workers' 4 slots stay about busy.
                                sent.append(await send(celery_app, harness.queue, 0.5 + (i % 5) * 0.5))
                                await anyio.sleep(0.4)

                    async def watch() -> None:
                        await ctl.wait_for(lambda: (within_caps(), False)[1], 300)

                    tg.start_soon(load)
                    tg.start_soon(watch)
                    done = await anyio.to_thread.run_sync(evacuate_cli, url, "a")
                    assert done.returncode == 0, done
                    assert "engine a: evacuating 2 worker(s)" in done.stdout and "engine a: evacuated" in done.stdout
                    await ctl.wait_for(lambda: pool_at(ctl, "v1", REPLICAS), 60)
                    tg.cancel_scope.cancel()
                await all_ended(harness.records, sent)
                status = json.loads(await anyio.to_thread.run_sync(
                    lambda: urllib.request.urlopen(url + "/status", timeout=10).read()))
                assert {e["name"]: (e["state"], len(e["workers"])) for e in status["engines"]} == {
                    "a": ("evacuating", 0), "b": ("schedulable", 2), "c": ("schedulable", 2)}
            finally:
                await runner.cleanup()
        assert ctl.drains.outcomes["retired"] == 2 and max(peak.values()) <= PER_ENGINE, (ctl.drains.outcomes, peak)
        assert log.minimum(initial=REPLICAS) >= 1, log.events
        assert running_per_engine(engines, harness.controller_id) == {"a": 0, "b": 2, "c": 2}
        # A restarted controller reads the engine's state from the journal: a stays closed.
        again = Controller(harness.settings(), broker_url, runtimes=dict(docker_runtimes(harness.settings())),
                           config_path=harness.path)
        again.pools.open_journal()
        assert again.fleet.engines.states == {"a": "evacuating"}
        again.pools.journal.close()  # type: ignore[union-attr]
    finally:
        for engine, _, _ in engines.values():
            ids = engine.docker("ps", "-aq", "--filter", f"label={LABEL_CONTROLLER}={harness.controller_id}").stdout
            if ids.split():
                engine.docker("rm", "-f", *ids.split(), check=False)
        for runtime in runtimes.values():
            await runtime.aclose()
    records = read_records(harness.records)
    starts = Counter(r["uuid"] for r in records if r["event"] == "start")
    ends = {r["uuid"] for r in records if r["event"] == "end"}
    assert len(sent) >= 10
    assert [u for u in sent if starts[u] != 1] == [], "lost or duplicated"
    assert [u for u in sent if u not in ends] == [], "interrupted"


async def test_an_engine_stopped_mid_rollout_holds_the_pool_until_it_is_back(
    engines: dict[str, tuple[PrivateDockerd, str, TlsMaterial]], broker_url: str, rabbit_vhost: str,
    celery_app: Celery, tmp_path: Path,
) -> None:
    harness = PoolHarness(tmp_path, broker_url)
    write_pool(harness, "v1", engines)
    runtimes = docker_runtimes(harness.settings())
    ctl = Controller(harness.settings(), broker_url, runtimes=dict(runtimes), config_path=harness.path)
    stopped, _, _ = engines["c"]
    peak: Counter[str] = Counter()
    sent: list[str] = []
    try:
        async with synced(ctl, 60):
            await ctl.wait_for(lambda: pool_at(ctl, "v1", REPLICAS), 120)
            on_c = set(ctl.fleet.engines.workers_on("c", ctl.fleet.members.values()))
            assert len(on_c) == 1, on_c
            log = ConsumerLog(urllib.parse.unquote(rabbit_vhost), harness.queue)
            async with anyio.create_task_group() as tg:
                await tg.start(log.run)

                async def load() -> None:
                    with anyio.move_on_after(180):
                        for i in range(900):
                            sent.append(await send(celery_app, harness.queue, 0.2 + (i % 5) * 0.3))
                            await anyio.sleep(0.1)

                def invariants() -> bool:
                    for name, count in Counter(engine_of(m.hostname) for m in ctl.fleet.of_pool("p")).items():
                        peak[name] = max(peak[name], count)
                    return False

                tg.start_soon(load)
                write_pool(harness, "v2", engines)
                await ctl.reload("test")
                await ctl.wait_for(lambda: any(m.version == "v2" and m.ready_at is not None
                                               for m in ctl.fleet.of_pool("p")), 120)
                await anyio.to_thread.run_sync(lambda: stopped.stop(kill_after_s=None))
                await ctl.wait_for(lambda: "c" in ctl.fleet.engines.down, 30)
                assert b'drainctl_engine_up{engine="c"} 0.0' in exposition(registry_for(ctl), ctl)
                draining = set(ctl.drains.active)
                # While c is gone: nothing new goes there, its worker is neither drained nor stopped, and no
                # other drain starts (the pool waits rather than guess).
                with anyio.move_on_after(8):
                    await ctl.wait_for(lambda: invariants() or bool(set(ctl.drains.active) - draining) or any(
                        engine_of(m.hostname) == "c" and m.hostname not in on_c for m in ctl.fleet.of_pool("p")), 10)
                assert not set(ctl.drains.active) - draining, (ctl.drains.active, draining)
                assert set(ctl.fleet.engines.workers_on("c", ctl.fleet.members.values())) == on_c
                assert ctl.fleet.rollouts, "the rollout went on as if c were there"
                await anyio.to_thread.run_sync(stopped.start)
                await ctl.wait_for(lambda: "c" not in ctl.fleet.engines.down, 60)
                await ctl.wait_for(lambda: (invariants(), pool_at(ctl, "v2", REPLICAS)
                                            and bool(ctl.fleet.history))[1], 180)
                tg.cancel_scope.cancel()
            await all_ended(harness.records, sent)
            assert ctl.fleet.history[-1].outcome == "succeeded"
            assert log.minimum(initial=REPLICAS) >= 1, log.events
            assert max(peak.values()) <= PER_ENGINE, peak
    finally:
        if stopped.pid is None:
            stopped.start()
        for engine, _, _ in engines.values():
            ids = engine.docker("ps", "-aq", "--filter", f"label={LABEL_CONTROLLER}={harness.controller_id}").stdout
            if ids.split():
                engine.docker("rm", "-f", *ids.split(), check=False)
        for runtime in runtimes.values():
            await runtime.aclose()
    records = read_records(harness.records)
    starts = Counter(r["uuid"] for r in records if r["event"] == "start")
    ends = {r["uuid"] for r in records if r["event"] == "end"}
    assert len(sent) >= 10
    assert [u for u in sent if starts[u] != 1] == [], "lost or duplicated"
    assert [u for u in sent if u not in ends] == [], "interrupted"


async def test_a_controller_starts_with_an_engine_down_and_adopts_its_workers_once_it_answers(
    engines: dict[str, tuple[PrivateDockerd, str, TlsMaterial]], broker_url: str, celery_app: Celery,
    tmp_path: Path,
) -> None:
    harness = PoolHarness(tmp_path, broker_url)
    write_pool(harness, "v1", engines)
    down, _, _ = engines["b"]
    all_runtimes = []
    sent: list[str] = []
    try:
        runtimes = docker_runtimes(harness.settings())
        all_runtimes += runtimes.values()
        first = Controller(harness.settings(), broker_url, runtimes=dict(runtimes), config_path=harness.path)
        async with synced(first, 60):
            await first.wait_for(lambda: pool_at(first, "v1", REPLICAS), 120)
            on_b = set(first.fleet.engines.workers_on("b", first.fleet.members.values()))
        assert len(on_b) == 1
        await anyio.to_thread.run_sync(lambda: down.stop(kill_after_s=None))  # its worker keeps running
        runtimes = docker_runtimes(harness.settings())
        all_runtimes += runtimes.values()
        ctl = Controller(harness.settings(), broker_url, runtimes=dict(runtimes), config_path=harness.path)
        async with synced(ctl, 60):
            await ctl.wait_for(lambda: "b" in ctl.fleet.engines.down, 30)
            # The pool is whole without b's worker, which nothing counts: a replacement on a or c.
            await ctl.wait_for(lambda: len([m for m in ctl.fleet.of_pool("p") if m.ready_at is not None]) == REPLICAS
                               and not set(ctl.fleet.members) & on_b, 120)
            assert all(engine_of(m.hostname) != "b" for m in ctl.fleet.of_pool("p"))
            for i in range(20):
                sent.append(await send(celery_app, harness.queue, 0.2 + (i % 4) * 0.2))
            await anyio.to_thread.run_sync(down.start)
            # b answers: its worker is adopted, and the pool, one too many, drains one (free first).
            await ctl.wait_for(lambda: "b" not in ctl.fleet.engines.down and bool(set(ctl.fleet.members) & on_b), 60)
            await ctl.wait_for(lambda: pool_at(ctl, "v1", REPLICAS) and ctl.drains.outcomes["retired"] >= 1, 120)
            await all_ended(harness.records, sent)
            alive = Counter(engine_of(m.hostname) for m in ctl.fleet.of_pool("p"))
            assert sum(alive.values()) == REPLICAS and max(alive.values()) <= PER_ENGINE, alive
    finally:
        if down.pid is None:
            down.start()
        for engine, _, _ in engines.values():
            ids = engine.docker("ps", "-aq", "--filter", f"label={LABEL_CONTROLLER}={harness.controller_id}").stdout
            if ids.split():
                engine.docker("rm", "-f", *ids.split(), check=False)
        for runtime in all_runtimes:
            await runtime.aclose()
    records = read_records(harness.records)
    starts = Counter(r["uuid"] for r in records if r["event"] == "start")
    ends = {r["uuid"] for r in records if r["event"] == "end"}
    assert [u for u in sent if starts[u] != 1] == [], "lost or duplicated"
    assert [u for u in sent if u not in ends] == [], "interrupted"
