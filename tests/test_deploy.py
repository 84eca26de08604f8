"""The operations kit: compose stack, Dockerfile, systemd unit, Airflow example (docs/deployment.md, docs/airflow.md).

Nothing here builds or pulls an image or starts a container: `docker-compose config` only validates and
interpolates the compose file. The systemd unit is checked with `systemd-analyze verify` (Debian's systemd
package, which scripts/setup.d/systemd.sh installs; under CI its absence is a failure), and its KillMode=process
semantics are demonstrated without systemd (see `test_killmode_process_semantics`).
"""

from __future__ import annotations

import configparser
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drainctl import config, pools

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
UNIT_FILE = COMPOSE_DIR / "systemd" / "drainctl.service"
AIRFLOW_TOML = ROOT / "examples" / "airflow" / "drainctl.toml"
LOG_PORT_WRAPPER = ROOT / "examples" / "airflow" / "log-port-wrapper.sh"

# The variables the compose file requires (`${VAR:?...}`), with harmless values.
COMPOSE_ENV = {"DOCKER_GID": "4242", "DRAINCTL_API_TOKEN": "test-token-not-a-secret"}


# --------------------------------------------------------------------------- compose

def _docker_compose() -> str:
    """The docker-compose binary; under CI its absence is a failure, elsewhere a skip."""
    found = shutil.which("docker-compose")
    if found:
        return found
    message = ("docker-compose is not installed: run `bash scripts/setup.d/compose.sh` as root "
               "(it installs Debian's docker-compose), or `bash scripts/setup.sh`")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # An empty --env-file: a developer's compose/.env must not decide what the test sees.
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    base_env = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV and not k.startswith("COMPOSE_")}
    return subprocess.run(
        [_docker_compose(), "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE), "config"],
        cwd=ROOT, env={**base_env, **env}, capture_output=True, text=True, timeout=60, check=False,
    )


def test_compose_config_is_valid(tmp_path: Path) -> None:
    result = _compose_config(tmp_path, COMPOSE_ENV)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    out = result.stdout
    for service in ("rabbitmq", "worker-image", "drainctl", "prometheus", "grafana"):
        assert re.search(rf"^  {re.escape(service)}:$", out, re.M), f"service {service} missing:\n{out}"
    # Host networking everywhere; no network is defined (none would be created: no bridge).
    assert out.count("network_mode: host") == 5, out
    assert not re.search(r"^networks:", out, re.M), out
    # The Docker socket and the socket's group for the non-root controller.
    assert "/var/run/docker.sock:/var/run/docker.sock" in out
    assert "'4242'" in out or "- 4242" in out or '"4242"' in out
    # drainctl and the workers are built from the repository's Dockerfile, never pulled.
    assert out.count(f"context: {ROOT}") == 2, out


@pytest.mark.parametrize("missing", sorted(COMPOSE_ENV))
def test_compose_requires_its_secrets(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in COMPOSE_ENV.items() if k != missing}
    result = _compose_config(tmp_path, env)
    assert result.returncode != 0
    assert missing in result.stderr, result.stderr


def _compose_text() -> str:
    return COMPOSE_FILE.read_text()


def test_compose_files_are_consistent() -> None:
    """The compose stack's drainctl config, images, Prometheus config and Dockerfile stages agree."""
    text = _compose_text()
    settings = config.load(COMPOSE_DIR / "drainctl.toml")
    assert len(settings.pool) == 2
    worker_image = re.search(r"^  worker-image:\n(?:    .*\n|\n)*?    image: (\S+)", text, re.M)
    assert worker_image is not None
    for pool in settings.pool:
        assert pool.runtime == "docker"
        assert pool.image == worker_image.group(1), "the pools must run the image compose builds"
        assert pool.network_mode == "host"
        argv = pools.command_for(pool, pool.target_version, f"{pool.name}-v1-abc@host")
        assert argv[:3] == ("celery", "-A", "examples.demo_app")
        assert argv[-6:] == ("-n", f"{pool.name}-v1-abc@host", "-Q", ",".join(pool.queues), "-c",
                             str(pool.concurrency))
    assert settings.controller.state_dir == Path("/var/lib/drainctl")
    assert settings.http.listen == "127.0.0.1:9540"
    assert "--config" in text and "/etc/drainctl/drainctl.toml" in text

    prometheus = (COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text()
    assert "127.0.0.1:9540" in prometheus
    assert re.search(r"^rule_files:\n  - alerts\.yml$", prometheus, re.M)
    assert "./prometheus:/etc/prometheus/drainctl:ro" in text
    assert "--config.file=/etc/prometheus/drainctl/prometheus.yml" in text
    assert "../grafana/provisioning:/etc/grafana/provisioning:ro" in text
    assert "../grafana/dashboards:" in text

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM \S+ AS worker$", dockerfile, re.M)
    assert re.search(r"^FROM \S+ AS drainctl$", dockerfile, re.M)
    assert "target: worker" in text and "target: drainctl" in text
    # The last stage (the default target) is the controller, as non-root, with `drainctl run`.
    last_stage = dockerfile[dockerfile.rindex("\nFROM "):]
    assert 'ENTRYPOINT ["drainctl", "run"]' in last_stage
    users = re.findall(r"^USER (\S+)$", last_stage, re.M)
    assert users and users[-1] not in ("root", "0")
    # The build context the Dockerfile copies from is allowed by .dockerignore.
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    for copied in ("pyproject.toml", "README.md", "drainctl/", "examples/demo_app.py", "examples/send_load.py"):
        assert f"!{copied}" in dockerignore, copied
        assert (ROOT / copied).exists(), copied


# --------------------------------------------------------------------------- systemd

def _unit() -> configparser.ConfigParser:
    # systemd syntax: case-sensitive keys, `$VAR` and `%x` are not interpolated, keys may repeat.
    parser = configparser.ConfigParser(interpolation=None, strict=False, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT_FILE.read_text(), source=str(UNIT_FILE))
    return parser


def test_systemd_unit_has_the_required_keys() -> None:
    unit = _unit()
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillMode"] == "process"
    assert service["ExecStart"].split()[0].endswith("/drainctl")
    assert service["ExecStart"].split()[1] == "run"
    assert service.get("User") not in (None, "root")
    # Secrets never on the command line.
    assert "amqp" not in service["ExecStart"] and "token" not in service["ExecStart"].lower()
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def _systemd_analyze() -> str:
    """The systemd-analyze binary; under CI its absence is a failure, elsewhere a skip."""
    found = shutil.which("systemd-analyze")
    if found:
        return found
    message = ("systemd-analyze is not installed: run `bash scripts/setup.d/systemd.sh` as root (it installs "
               "Debian's systemd), or `bash scripts/setup.sh`; test_systemd_unit_has_the_required_keys checks the keys")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# The unit's program, and where verify finds one here: it checks that ExecStart's program exists.
UNIT_PROGRAM = "/opt/drainctl/.venv/bin/drainctl"
LOCAL_PROGRAM = Path(sys.executable).parent / "drainctl"


def _verify(tmp_path: Path, text: str) -> tuple[int, list[str]]:
    """`systemd-analyze verify` of `text` as drainctl.service: its exit code and its lines about the unit.

    Unknown keys and bad values are only warnings (exit 0 still): the lines about the unit are what tells.
    The log settings are pinned so that a caller's SYSTEMD_LOG_* cannot hide warnings or send them to the
    journal."""
    assert LOCAL_PROGRAM.exists(), LOCAL_PROGRAM
    unit = tmp_path / "drainctl.service"
    unit.write_text(text.replace(UNIT_PROGRAM, str(LOCAL_PROGRAM)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMD_")}
    env.update(SYSTEMD_LOG_LEVEL="info", SYSTEMD_LOG_TARGET="console", SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="")
    result = subprocess.run([_systemd_analyze(), "verify", "--man=no", str(unit)], capture_output=True, text=True,
                            timeout=60, check=False, env=env)
    output = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in output if "drainctl.service" in line]


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    text = UNIT_FILE.read_text()
    assert f"ExecStart={UNIT_PROGRAM} run " in text  # what _verify points at this checkout's drainctl
    code, about_unit = _verify(tmp_path, text)
    assert code == 0 and not about_unit, "\n".join(about_unit)


@pytest.mark.parametrize(("broken", "complaint"), [
    ("KillMode=process", "KillMode=bogus"),
    ("Type=exec", "Typo=exec"),
    (f"ExecStart={UNIT_PROGRAM} run", "ExecStart=/nonexistent/drainctl run"),
    ("[Install]", "[Instal]"),
], ids=["bad-value", "unknown-key", "missing-program", "unknown-section"])
def test_systemd_verify_reports_a_broken_unit(tmp_path: Path, broken: str, complaint: str) -> None:
    """The check above would notice: verify complains about each of these slips in the unit."""
    text, replaced = re.subn(rf"^{re.escape(broken)}", complaint, UNIT_FILE.read_text(), count=1, flags=re.M)
    assert replaced == 1, broken  # a setting, not its mention in a comment
    code, about_unit = _verify(tmp_path, text)
    assert code != 0 or about_unit, f"systemd-analyze verify accepted a unit with {complaint!r}"


_SPAWNER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(1)"],
                         start_new_session=True, stdin=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(120)
"""


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat[stat.rfind(")") + 2:].split()[19])


def _alive(pid: int, start_time: int) -> bool:
    """Running (not a zombie) and still the same process (start time unchanged: no pid reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[0] != "Z" and int(fields[19]) == start_time


def test_killmode_process_semantics() -> None:
    """What KillMode=process does to drainctl's process-runtime workers, as far as it can be shown without systemd.

    drainctl starts each worker with start_new_session=True. On stop/restart, KillMode=process makes systemd
    send SIGTERM (and, after TimeoutStopSec, SIGKILL) to the main process only. Here the test plays systemd:
    a parent spawns a child in its own session, the parent alone gets SIGTERM, and the child must survive it,
    reparented, still running. (Under the default KillMode=control-group systemd would signal every process
    of the unit's cgroup, and a new session does not leave the cgroup: that part needs systemd to show.)
    """
    parent = subprocess.Popen([sys.executable, "-c", _SPAWNER], stdout=subprocess.PIPE, text=True)
    child_pid: int | None = None
    child_start: int | None = None
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 30)
        assert ready, "the spawner did not report its child within 30 s"
        child_pid = int(parent.stdout.readline())
        child_start = _start_time(child_pid)
        assert child_start is not None
        # The child leads a session and a process group of its own, unlike its parent.
        assert os.getsid(child_pid) == child_pid and os.getpgid(child_pid) == child_pid
        assert os.getsid(parent.pid) != child_pid

        parent.send_signal(signal.SIGTERM)  # KillMode=process: the main process only
        assert parent.wait(timeout=10) == -signal.SIGTERM

        deadline = time.monotonic() + 1.0  # give a (wrongly) propagated signal time to land
        while time.monotonic() < deadline:
            assert _alive(child_pid, child_start), "the worker died with its controller"
            time.sleep(0.05)
        assert _proc_ppid(child_pid) != parent.pid  # reparented (to init or a subreaper)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if child_pid is not None and child_start is not None and _alive(child_pid, child_start):
            os.kill(child_pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(child_pid, child_start) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(child_pid, child_start), f"could not clean up pid {child_pid}"


def _proc_ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2:].split()[1])


# --------------------------------------------------------------------------- Airflow

def test_airflow_example_loads_and_expands() -> None:
    settings = config.load(AIRFLOW_TOML)
    assert {p.name for p in settings.pool} == {"airflow", "airflow-long"}
    assert {q for p in settings.pool for q in p.queues} >= {"default"}
    for pool in settings.pool:
        hostname = f"{pool.name}-{pool.target_version}-x1@host1"
        argv = pools.command_for(pool, pool.target_version, hostname)
        i = argv.index("celery")
        assert argv[i - 1].endswith("airflow") and argv[i + 1] == "worker"
        # {hostname} is in the template: drainctl appends nothing (no -n/-Q/-c, which airflow would reject).
        assert argv[i + 2:] == ("--celery-hostname", hostname, "--queues", ",".join(pool.queues),
                                "--concurrency", str(pool.concurrency))
        assert "-n" not in argv and "-Q" not in argv
        assert Path(argv[0]).name == LOG_PORT_WRAPPER.name
        assert "AIRFLOW_LOG_PORTS" in pool.env
        assert pool.stop_timeout_s > 1800  # long tasks: the warm shutdown must outlast them


def test_log_port_wrapper_gives_each_worker_its_own_port(tmp_path: Path) -> None:
    env = {**os.environ, "AIRFLOW_LOG_PORT_LOCK_DIR": str(tmp_path), "AIRFLOW_LOG_PORTS": "48793,48795-48796"}
    report = [sys.executable, "-c",
              "import os, sys, time; print(os.environ['AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT'], flush=True); "
              "time.sleep(float(sys.argv[1]))"]
    holders: list[subprocess.Popen[str]] = []
    try:
        ports = []
        for _ in range(3):
            holder = subprocess.Popen([str(LOG_PORT_WRAPPER), *report, "30"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
            holders.append(holder)
            assert holder.stdout is not None
            ready, _, _ = select.select([holder.stdout], [], [], 30)
            assert ready
            ports.append(holder.stdout.readline().strip())
        assert ports == ["48793", "48795", "48796"]
        full = subprocess.run([str(LOG_PORT_WRAPPER), *report, "0"], env=env, capture_output=True, text=True,
                              timeout=30, check=False)
        assert full.returncode == 1 and "taken" in full.stderr
        # A worker that exits frees its port for the next one.
        holders[1].kill()
        holders[1].wait(timeout=10)
        again = subprocess.run([str(LOG_PORT_WRAPPER), *report, "0"], env=env, capture_output=True, text=True,
                               timeout=30, check=False)
        assert again.returncode == 0 and again.stdout.strip() == "48795"
    finally:
        for holder in holders:
            if holder.poll() is None:
                holder.kill()
                holder.wait(timeout=10)
