"""What the pure core reports to the shell: a `Notice` for each thing worth a log line.

The counterpart of `drainctl.core.commands` (what the core asks the shell to do).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth a log line. `kind` is a short stable label."""

    kind: str
    hostname: str
    detail: str = ""
