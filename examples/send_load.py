"""Publish a burst of ``demo.work`` tasks for the demo.

    python examples/send_load.py --broker amqp://guest:guest@127.0.0.1:5672/drainctl-demo \\
        --count 40 --queue default --max-seconds 3 [--eta-fraction 0.1] [--seed 1]

Each task works for a random duration in [0.2, max-seconds]; about ``eta-fraction`` of them get a
countdown of 30-60 s (ETA tasks, held by the worker that received them). Publishing uses
publisher confirms, so every task counted as sent is in the broker.
"""

from __future__ import annotations

import argparse
import random
import sys

from celery import Celery


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True, help="AMQP URL, e.g. amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--count", type=int, default=40, help="number of tasks (default 40)")
    parser.add_argument("--queue", default="default", help="queue to publish to (default: default)")
    parser.add_argument("--max-seconds", type=float, default=3.0, help="longest task duration (default 3)")
    parser.add_argument(
        "--eta-fraction", type=float, default=0.1, help="share of tasks with a 30-60 s countdown (default 0.1)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable load")
    args = parser.parse_args(argv)
    if args.count < 0 or args.max_seconds < 0.2 or not 0.0 <= args.eta_fraction <= 1.0:
        parser.error("need --count >= 0, --max-seconds >= 0.2 and 0 <= --eta-fraction <= 1")

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
    with app.producer_or_acquire() as producer:
        for _ in range(args.count):
            seconds = round(rng.uniform(0.2, args.max_seconds), 2)
            countdown = rng.uniform(30, 60) if rng.random() < args.eta_fraction else None
            app.send_task(
                "demo.work",
                args=[seconds],
                queue=args.queue,
                countdown=countdown,
                producer=producer,
            )
            sent += 1
            with_eta += countdown is not None
    print(f"sent {sent} demo.work tasks to queue {args.queue!r} ({with_eta} with a 30-60 s countdown)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
