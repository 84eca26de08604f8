"""Memory and speed of drainctl's pure ingest path, no broker: wire bytes -> decode_message -> Cluster.apply.

    .venv/bin/python bench/memory.py                      # 1,000,000 tasks on 500 workers
    .venv/bin/python bench/memory.py --tasks 200000 --tracemalloc

The stream (celery_wire.py) is generated lazily, one message at a time, and never held: what stays
in memory is what the model keeps (workers, in-flight tasks, tombstones, counters). The model's
clock is the stream's simulated time, and `Cluster.tick` runs once per simulated second, as the
controller's timer does. Target: peak RSS <= 150 MB.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
import tracemalloc
from pathlib import Path

from celery_wire import CeleryEventStream

from drainctl.core.events import decode_message
from drainctl.core.model import Cluster

TARGET_PEAK_RSS_MB = 150.0


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=3)
    parser.add_argument("--tracemalloc", action="store_true", help="also show the top allocation sites (slow)")
    args = parser.parse_args()

    if args.tracemalloc:
        tracemalloc.start(1)
    rss_start = rss_mb("VmRSS")
    stream = CeleryEventStream(workers=args.workers, target_events=None, max_tasks=args.tasks, seed=args.seed,
                               max_batch=args.max_batch)
    cluster = Cluster()
    perf = time.perf_counter
    pure_s = 0.0
    events = 0
    messages = 0
    commands = 0
    notices: dict[str, int] = {}
    max_in_flight = 0
    next_tick = stream.start + 1.0
    started = perf()
    for message in stream:
        now = stream.now
        t0 = perf()
        decoded = decode_message(message.body, "application/json")
        for event in decoded.events:
            c, n = cluster.apply(event, now)
            if c:
                commands += len(c)
            for notice in n:
                notices[notice.kind] = notices.get(notice.kind, 0) + 1
        if now >= next_tick:
            for notice in cluster.tick(now):
                notices[notice.kind] = notices.get(notice.kind, 0) + 1
            next_tick = now + 1.0
        pure_s += perf() - t0
        messages += 1
        events += len(decoded.events)
        if decoded.rejections:
            raise SystemExit(f"rejected: {decoded.rejections}")
        if messages % 100_000 == 0:
            max_in_flight = max(max_in_flight, cluster.in_flight())
    wall_s = perf() - started
    current = rss_mb("VmRSS")
    gc.collect()
    current_after_gc = rss_mb("VmRSS")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # last: it includes the reads above
    st = stream.stats
    result = {
        "tasks": st.tasks,
        "workers": args.workers,
        "messages": messages,
        "events": events,
        "events_per_message": round(events / messages, 2),
        "events_by_type": dict(cluster.events_by_type),
        "pure_seconds": round(pure_s, 2),
        "pure_events_per_s": round(events / pure_s),
        "pure_us_per_event": round(1e6 * pure_s / events, 2),
        "wall_seconds_incl_generation": round(wall_s, 2),
        "rss_at_start_mb": round(rss_start, 1),
        "peak_rss_mb": round(peak, 1),
        "rss_after_mb": round(current, 1),
        "rss_after_gc_mb": round(current_after_gc, 1),
        "in_flight_end": cluster.in_flight(),
        "in_flight_max_sampled": max_in_flight,
        "tombstones_end": cluster.tombstones(),
        "workers_in_model": len(cluster.workers),
        "late_events": cluster.late_events,
        "commands": commands,
        "notices": notices,
    }
    print(f"{st.tasks:,} tasks on {args.workers} workers: {events:,} events in {messages:,} messages "
          f"({events / messages:.2f} events/message), seed {args.seed}")
    print(f"decode_message + Cluster.apply (+ tick): {pure_s:.2f} s -> {events / pure_s:,.0f} events/s "
          f"({1e6 * pure_s / events:.2f} µs/event); wall incl. generating the stream {wall_s:.1f} s")
    print(f"RSS: peak {peak:.1f} MB (ru_maxrss), now {current:.1f} MB ({current_after_gc:.1f} MB after gc), "
          f"{rss_start:.1f} MB at start (interpreter + imports)")
    print(f"model at the end: {cluster.in_flight()} in flight (max sampled {max_in_flight}), "
          f"{cluster.tombstones():,} tombstones, {len(cluster.workers)} workers, {cluster.late_events} late events")
    print(f"target: peak RSS <= {TARGET_PEAK_RSS_MB:.0f} MB: {'MET' if peak <= TARGET_PEAK_RSS_MB else 'NOT MET'}")
    if args.tracemalloc:
        snapshot = tracemalloc.take_snapshot()
        print("top allocation sites still held:")
        for stat in snapshot.statistics("lineno")[:10]:
            print(f"  {stat.size / 1e6:7.2f} MB  {stat.count:>8,}  {stat.traceback[0]}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
