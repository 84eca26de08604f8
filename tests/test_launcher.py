"""The `drainctl` command keeps rich out of its process (structlog would import it where installed)."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)


def test_the_command_runs_without_rich_and_its_console_logs_still_print_a_traceback() -> None:
    done = run("import sys; from drainctl.launcher import main; main(['--version'])")
    assert done.returncode == 0 and "drainctl" in done.stdout, done
    code = (
        "import sys; from drainctl import launcher; launcher.without_rich()\n"
        "import drainctl.cli, structlog\n"
        "from drainctl import logs\n"
        "assert sys.modules['rich'] is None and 'pygments' not in sys.modules\n"
        "logs.configure('console', 'info')\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    structlog.get_logger('t').exception('boom')\n"
    )
    done = run(code)
    assert done.returncode == 0, done
    assert "ZeroDivisionError" in done.stdout + done.stderr and "boom" in done.stdout + done.stderr
