"""Publish ``demo.work`` tasks for the demo: a burst, or a steady stream for a while.

    # a burst of 40 tasks
    python examples/send_load.py --broker amqp://guest:guest@127.0.0.1:5672/drainctl-demo \\
        --count 40 --queue default --max-seconds 3 [--eta-fraction 0.1] [--seed 1]
    # a steady stream: 4 tasks/s for 25 s, their ids written to sent.txt
    python examples/send_load.py --broker ... --duration 25 --rate 4 --max-seconds 2 --eta-fraction 0 \\
        --sent-file sent.txt

Each task works for a random duration in [0.2, max-seconds]; about ``eta-fraction`` of them get a
countdown of 30-60 s (ETA tasks, held by the worker that received them). Publishing uses
publisher confirms, so every task counted as sent (and written to ``--sent-file``, one id a line,
flushed as it goes) is in the broker. The stream mode sends at most ``ceil(duration * rate)``
tasks and stops at ``duration`` seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path
from typing import IO

from celery import Celery

MAX_DURATION_S = 3600.0
MAX_RATE = 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True, help="AMQP URL, e.g. amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--count", type=int, default=None, help="burst mode: number of tasks (default 40)")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help=f"stream mode: keep sending for S seconds (at most {MAX_DURATION_S:.0f})")
    parser.add_argument("--rate", type=float, default=4.0, metavar="R",
                        help=f"stream mode: tasks per second (default 4, at most {MAX_RATE:.0f})")
    parser.add_argument("--sent-file", type=Path, default=None, help="append the id of every task sent to this file")
    parser.add_argument("--queue", default="default", help="queue to publish to (default: default)")
    parser.add_argument("--max-seconds", type=float, default=3.0, help="longest task duration (default 3)")
    parser.add_argument(
        "--eta-fraction", type=float, default=0.1, help="share of tasks with a 30-60 s countdown (default 0.1)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable load")
    args = parser.parse_args(argv)
    if args.max_seconds < 0.2 or not 0.0 <= args.eta_fraction <= 1.0:
        parser.error("need --max-seconds >= 0.2 and 0 <= --eta-fraction <= 1")
    if args.duration is not None:
        if args.count is not None:
            parser.error("give either --count (a burst) or --duration (a stream), not both")
        if not 0 < args.duration <= MAX_DURATION_S or not 0 < args.rate <= MAX_RATE:
            parser.error(f"need 0 < --duration <= {MAX_DURATION_S:.0f} and 0 < --rate <= {MAX_RATE:.0f}")
    elif args.count is None:
        args.count = 40
    elif args.count < 0:
        parser.error("need --count >= 0")

    rng = random.Random(args.seed)
    app = Celery("send_load")
    app.conf.update(
        broker_url=args.broker,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=3,
        task_serializer="json",
        accept_content=["json"],
    )

    sent = with_eta = 0
    sent_file: IO[str] | None = args.sent_file.open("a", encoding="utf-8") if args.sent_file else None
    started = time.monotonic()
    try:
        with app.producer_or_acquire() as producer:

            def send_one() -> None:
                nonlocal sent, with_eta
                seconds = round(rng.uniform(0.2, args.max_seconds), 2)
                countdown = rng.uniform(30, 60) if rng.random() < args.eta_fraction else None
                result = app.send_task(
                    "demo.work",
                    args=[seconds],
                    queue=args.queue,
                    countdown=countdown,
                    producer=producer,
                )
                sent += 1
                with_eta += countdown is not None
                if sent_file is not None:
                    sent_file.write(result.id + "\n")
                    sent_file.flush()

            if args.duration is None:
                for _ in range(args.count):
                    send_one()
            else:
                deadline = started + args.duration
                next_report = started + 5.0
                for i in range(math.ceil(args.duration * args.rate)):
                    # Paced against the start, not the previous send: a slow confirm does not slow the rate.
                    due = started + i / args.rate
                    now = time.monotonic()
                    if due >= deadline or now >= deadline:
                        break
                    if due > now:
                        time.sleep(due - now)
                    send_one()
                    if time.monotonic() >= next_report:
                        print(f"sent {sent} tasks in {time.monotonic() - started:.0f}s", flush=True)
                        next_report += 5.0
    finally:
        if sent_file is not None:
            sent_file.close()
    print(
        f"sent {sent} demo.work tasks to queue {args.queue!r} in {time.monotonic() - started:.1f}s "
        f"({with_eta} with a 30-60 s countdown)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
