"""The ready file of `drainctl entrypoint --ready-file` and its probe, `drainctl entrypoint-ready`.

The probe runs every few seconds in every worker pod: `drainctl.launcher` answers it without importing the
command line. The worker side (the file appears once a real worker consumes, and goes when its drain
starts) is tested in tests/integration/test_entrypoint_ready.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from drainctl import ready_file

ROOT = Path(__file__).resolve().parent.parent


def run_drainctl(*args: str, code: str = "from drainctl.launcher import main; main()") -> subprocess.CompletedProcess[str]:
    """The `drainctl` console script's code, in a fresh interpreter (what the kubelet's exec probe runs)."""
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_probe_says_ready_while_the_file_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "ready")
    assert ready_file.probe(path) == ready_file.EXIT_NOT_READY
    assert "not ready: no " in capsys.readouterr().out
    ready_file.write(path, "w1@box consumes default\n")
    assert ready_file.probe(path) == ready_file.EXIT_READY
    assert capsys.readouterr().out == "ready: w1@box consumes default\n"
    assert not Path(f"{path}.tmp").exists()
    assert ready_file.remove(path) is True
    assert ready_file.remove(path) is False  # already gone: fine
    assert ready_file.probe(path) == ready_file.EXIT_NOT_READY


def test_an_unreadable_ready_file_is_not_ready(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ready_file.probe(str(tmp_path)) == ready_file.EXIT_NOT_READY  # a directory
    assert "not ready: cannot read" in capsys.readouterr().out


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "ready"
    target.mkdir()  # the rename over a directory fails
    with pytest.raises(IsADirectoryError):
        ready_file.write(str(target), "text")
    assert not (tmp_path / "ready.tmp").exists()


def test_prepare_removes_a_file_left_from_before_and_refuses_an_unusable_place(tmp_path: Path) -> None:
    stale = tmp_path / "ready"
    stale.write_text("from the previous container")
    ready_file.prepare(str(stale))
    assert not stale.exists()
    with pytest.raises(ValueError, match="is not a directory this process can write to"):
        ready_file.prepare(str(tmp_path / "missing" / "ready"))
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "ready").mkdir()  # unlink() cannot remove a directory
    with pytest.raises(ValueError, match="cannot remove the ready file left from before"):
        ready_file.prepare(str(blocked / "ready"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--ready-file", "/tmp/r"], "/tmp/r"),
        (["--ready-file=/tmp/r"], "/tmp/r"),
        ([], None),
        (["--ready-file"], None),
        (["--ready-file", ""], None),
        (["--ready-file="], None),
        (["--help"], None),
        (["--ready-file", "/tmp/r", "--extra"], None),
    ],
)
def test_the_fast_path_takes_only_the_probes_own_arguments(args: list[str], expected: str | None) -> None:
    assert ready_file.probe_path(args) == expected


def test_the_probe_is_answered_without_importing_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "ready"
    code = ("import sys\nfrom drainctl.launcher import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit as exit:\n    print('cli imported:', 'drainctl.cli' in sys.modules)\n"
            "    raise\n")
    missing = run_drainctl("entrypoint-ready", "--ready-file", str(path), code=code)
    assert missing.returncode == 1, missing.stderr
    assert missing.stdout.splitlines()[-1] == "cli imported: False"
    path.write_text("w1@box consumes default\n")
    ready = run_drainctl("entrypoint-ready", f"--ready-file={path}", code=code)
    assert ready.returncode == 0, ready.stderr
    assert ready.stdout.splitlines() == ["ready: w1@box consumes default", "cli imported: False"]


def test_other_arguments_go_to_the_command_line() -> None:
    usage = run_drainctl("entrypoint-ready")
    assert usage.returncode == 2
    assert "Missing option '--ready-file'" in usage.stderr
    helped = run_drainctl("entrypoint-ready", "--help")
    assert helped.returncode == 0 and "Readiness probe" in helped.stdout
    version = run_drainctl("--version")
    assert version.returncode == 0 and "drainctl, version" in version.stdout


def test_the_entrypoint_refuses_a_ready_file_it_could_not_write(tmp_path: Path) -> None:
    started = tmp_path / "started"
    result = subprocess.run(
        [sys.executable, "-m", "drainctl", "entrypoint", "--ready-file", str(tmp_path / "missing" / "ready"), "--",
         "touch", str(started)],
        cwd=ROOT, env={**os.environ, "DRAINCTL_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "is not a directory this process can write to" in result.stderr
    assert not started.exists()  # the worker was never started
