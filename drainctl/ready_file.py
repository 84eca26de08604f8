"""The ready file of `drainctl entrypoint --ready-file PATH`, and its probe `drainctl entrypoint-ready`.

The file exists while the worker consumes and no drain has started (docs/kubernetes.md). Standard library
only: the probe runs every few seconds in every worker pod, and `drainctl.launcher` answers it without
importing the rest of drainctl.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

OPTION = "--ready-file"
EXIT_READY = 0
EXIT_NOT_READY = 1


def prepare(path: str) -> None:
    """At start, before the worker exists: remove a file a previous container left (an `emptyDir` outlives
    its containers), and refuse a place where the file could not be written. Raises ValueError."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"{OPTION} {path}: {directory} is not a directory this process can write to")
    try:
        remove(path)
    except OSError as exc:
        raise ValueError(f"{OPTION} {path}: cannot remove the ready file left from before: {exc}") from exc


def write(path: str, text: str) -> None:
    """Write the file whole (a temporary file renamed over it). Raises OSError."""
    temporary = f"{path}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def remove(path: str) -> bool:
    """True if the file was there. Raises OSError, except when the file is already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def probe(path: str) -> int:
    """`drainctl entrypoint-ready`: 0 when the ready file exists, 1 otherwise (what the kubelet shows)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as ready:
            text = ready.read(200).strip()
    except FileNotFoundError:
        print(f"not ready: no {path} (the worker does not consume yet, or it is draining)")
        return EXIT_NOT_READY
    except OSError as exc:
        print(f"not ready: cannot read {path}: {exc}")
        return EXIT_NOT_READY
    print(f"ready: {text}")
    return EXIT_READY


def probe_path(args: Sequence[str]) -> str | None:
    """The PATH of `entrypoint-ready --ready-file PATH` (or `--ready-file=PATH`) arguments; None for any
    other arguments, which the full command line handles (`--help`, a mistake)."""
    if len(args) == 2 and args[0] == OPTION and args[1]:
        return args[1]
    if len(args) == 1 and args[0].startswith(f"{OPTION}=") and len(args[0]) > len(OPTION) + 1:
        return args[0][len(OPTION) + 1:]
    return None


def fast_probe(argv: Sequence[str]) -> int | None:
    """`drainctl` arguments: the probe's exit code if they are `entrypoint-ready --ready-file PATH`, else None."""
    if not argv or argv[0] != "entrypoint-ready":
        return None
    path = probe_path(argv[1:])
    return None if path is None else probe(path)
