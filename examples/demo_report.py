"""Summarise a demo run: what happened to every task the load sender sent.

    python examples/demo_report.py --sent-file .demo/sent.txt --record-dir .demo/records \\
        [--rollout-json .demo/rollout.json] [--wait 60]

Reads the ids written by ``examples/send_load.py --sent-file`` and the start/end records that
``demo.work`` (``examples/demo_app.py``) appends under ``DEMO_RECORD_DIR``, and counts, over the
tasks sent:

* completed: exactly one ``start`` and one ``end`` record;
* interrupted: a ``start`` without its ``end`` (the task was cut short);
* lost: no record at all (sent, never started);
* duplicated: more than one ``start`` (run twice, e.g. redelivered after an interruption).

``--rollout-json`` is the output of ``drainctl rollout status --json``: its most recent rollout
(``pools[0].history[0]``) is printed too. ``--wait S`` first waits (at most S seconds) until every
task sent has an ``end`` record.

Exit status: 0 if nothing was interrupted, lost or duplicated (and the rollout, if given, succeeded);
1 otherwise; 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

MAX_WAIT_S = 600.0


def read_sent(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_records(record_dir: Path) -> list[dict[str, Any]]:
    """Every well-formed record under ``record_dir`` (a line still being written is skipped)."""
    records = []
    for path in sorted(record_dir.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("uuid"), str):
                records.append(record)
    return records


def count_events(records: list[dict[str, Any]]) -> tuple[Counter[str], Counter[str]]:
    starts: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    for record in records:
        if record.get("event") == "start":
            starts[record["uuid"]] += 1
        elif record.get("event") == "end":
            ends[record["uuid"]] += 1
    return starts, ends


def last_rollout(path: Path) -> dict[str, Any] | None:
    document = json.loads(path.read_text(encoding="utf-8"))
    pools = document.get("pools") or []
    history = (pools[0].get("history") or []) if pools else []
    return history[0] if history else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sent-file", type=Path, required=True, help="ids of the tasks sent, one a line")
    parser.add_argument("--record-dir", type=Path, required=True, help="DEMO_RECORD_DIR of the workers")
    parser.add_argument("--rollout-json", type=Path, default=None, help="output of `drainctl rollout status --json`")
    parser.add_argument("--wait", type=float, default=0.0, metavar="S",
                        help=f"wait up to S seconds (at most {MAX_WAIT_S:.0f}) for every task sent to end")
    args = parser.parse_args(argv)
    if not 0 <= args.wait <= MAX_WAIT_S:
        parser.error(f"need 0 <= --wait <= {MAX_WAIT_S:.0f}")
    try:
        sent = read_sent(args.sent_file)
    except OSError as exc:
        print(f"demo_report: cannot read {args.sent_file}: {exc.strerror}", file=sys.stderr)
        return 2
    if not args.record_dir.is_dir():
        print(f"demo_report: {args.record_dir} is not a directory", file=sys.stderr)
        return 2

    deadline = time.monotonic() + args.wait
    while True:
        records = read_records(args.record_dir)
        starts, ends = count_events(records)
        pending = [u for u in sent if ends[u] == 0]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if pending and args.wait > 0:
        print(f"demo_report: {len(pending)} task(s) still without an end record after {args.wait:.0f}s")

    sent_set = set(sent)
    completed = sum(1 for u in sent_set if starts[u] == 1 and ends[u] == 1)
    interrupted = sum(1 for u in sent_set if starts[u] > ends[u])
    lost = sum(1 for u in sent_set if starts[u] == 0)
    duplicated = sum(1 for u in sent_set if starts[u] > 1)
    foreign = len(set(starts) - sent_set)
    by_worker = Counter(r.get("hostname", "?") for r in records if r.get("event") == "end" and r["uuid"] in sent_set)

    print(f"tasks sent        {len(sent_set):5d}" + (f"  ({len(sent) - len(sent_set)} ids repeated)"
                                                    if len(sent) != len(sent_set) else ""))
    print(f"completed         {completed:5d}  (exactly one start and one end)")
    print(f"interrupted       {interrupted:5d}  (a start without an end)")
    print(f"lost              {lost:5d}  (sent, never started)")
    print(f"duplicated        {duplicated:5d}  (started more than once)")
    if foreign:
        print(f"(also {foreign} task(s) run that this load did not send)")
    for hostname, n in sorted(by_worker.items()):
        print(f"  finished on {hostname}: {n}")

    rollout_ok = True
    if args.rollout_json is not None:
        try:
            past = last_rollout(args.rollout_json)
        except (OSError, ValueError, AttributeError) as exc:
            print(f"demo_report: cannot read the rollout status {args.rollout_json}: {exc}", file=sys.stderr)
            return 2
        if past is None:
            print("rollout           none recorded")
            rollout_ok = False
        else:
            print(f"rollout           {past['from_version']} -> {past['to_version']} {past['outcome']}"
                  f"  ({past.get('id')}, requested by {past.get('requested_by')})")
            rollout_ok = past["outcome"] == "succeeded"
    return 0 if interrupted == lost == duplicated == 0 and rollout_ok else 1


if __name__ == "__main__":
    sys.exit(main())
