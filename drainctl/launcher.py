"""The `drainctl` command.

`drainctl entrypoint-ready --ready-file PATH` is a readiness probe: the kubelet runs it every few seconds in
every worker pod. It is answered here with the standard library alone (about 0.05 s of CPU; importing the
command line, `drainctl.cli`, takes about 0.5 s). Everything else, including any other form of that command
(`--help`, a mistake), goes to the command line itself.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from drainctl import ready_file


def without_rich() -> None:
    """Keep rich (and the pygments it loads) out of this process.

    structlog imports rich, wherever it is installed (a development tool may bring it), for pretty console
    tracebacks: about 4 MB of a long-lived controller's memory, for output that JSON logs never use. The
    console renderer then prints plain tracebacks.
    """
    if "rich" not in sys.modules:
        sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` now raises ImportError


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    code = ready_file.fast_probe(args)
    if code is not None:
        sys.exit(code)
    without_rich()
    from drainctl.cli import main as cli

    cli(args=args)
