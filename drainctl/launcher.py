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


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    code = ready_file.fast_probe(args)
    if code is not None:
        sys.exit(code)
    from drainctl.cli import main as cli

    cli(args=args)
