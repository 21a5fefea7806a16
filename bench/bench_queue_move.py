"""Rescue at scale: moving 100 000 stranded messages between Redis queues, verified by id.

Starts its own redis-server on a free port, fills a source queue with real Celery messages (one is published
with `send_task`, then cloned with fresh ids: byte for byte what kombu writes, without waiting 100 000 round
trips), and measures:

1. the dashboard's move (RedisQueueBrowser.move: LRANGE from the tail + an atomic Lua batch of LREM/LPUSH per
   `--batch` messages), every message: time, messages/s;
2. the same, selecting one task name out of two (half the queue; the other half stays);
3. for comparison, Celery's own `celery.contrib.migrate.move` (consume with acks, republish, ack) on
   `--migrate` messages (0 to skip): time, messages/s, and whether anything was lost or duplicated.

After each phase the source and target lists are read back whole: zero lost and zero duplicated is checked by
id (exit status 1 otherwise). Figures only; nothing is asserted about time.
Usage: .venv/bin/python bench/bench_queue_move.py [--messages 100000] [--batch 1000] [--migrate 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kombu  # noqa: E402
import redis  # noqa: E402
from celery import Celery  # noqa: E402

from dashboard.model.kombu import KombuRedisLayout  # noqa: E402
from dashboard.model.messages import Selection  # noqa: E402
from dashboard.services.broker.redis import RedisBrokerInspector  # noqa: E402
from dashboard.services.broker.redis_queues import RedisQueueBrowser  # noqa: E402
from dashboard.services.processes import RedisServer  # noqa: E402

NAME = "worker.tasks.link.unfurl"
TYPO = "worker.tasks.link.unfurll"
FILL_BATCH = 5_000
LAYOUT = KombuRedisLayout()


def template_message(url: str) -> dict[str, Any]:
    """One message exactly as Celery 5 / kombu write it to Redis (published, then read back)."""
    app = Celery("bench-template", broker=url, set_as_current=False)
    try:
        app.send_task(NAME, kwargs={"url": "https://example.com/post"}, queue="bench-template")
    finally:
        app.close()
    client = redis.Redis.from_url(url)
    raw = client.rpop("bench-template")
    client.close()
    assert isinstance(raw, bytes), "the template message did not arrive"
    message: dict[str, Any] = json.loads(raw)
    return message


def fill(client: redis.Redis, queue: str, template: dict[str, Any], count: int, *,
         alternate: bool = False) -> list[str]:
    """LPUSH `count` clones of `template` with fresh ids (oldest first); with `alternate`, every other one is named
    TYPO. The ids, in serving order."""
    ids = []
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        task_id = str(uuid.uuid4())
        message = json.loads(json.dumps(template))
        headers = message["headers"]
        headers["id"] = headers["root_id"] = task_id
        if alternate and index % 2:
            headers["task"] = TYPO
        message["properties"]["correlation_id"] = message["properties"]["delivery_tag"] = task_id
        pipe.lpush(queue, json.dumps(message))
        ids.append(task_id)
        if len(pipe) >= FILL_BATCH:
            pipe.execute()
    pipe.execute()
    return ids


def ids_in(client: redis.Redis, queue: str) -> list[str]:
    """Every id waiting in `queue` (all priority lists), serving order within each list."""
    found = []
    for key in LAYOUT.queue_keys(queue):
        found += [json.loads(raw)["headers"]["id"] for raw in reversed(client.lrange(key, 0, -1))]
    return found


def check(label: str, expected_moved: list[str], expected_left: list[str], moved: list[str], left: list[str]) -> bool:
    """Zero lost, zero duplicated, by id; prints the verdict."""
    duplicated = sum(count - 1 for count in Counter(moved + left).values() if count > 1)
    lost = len(set(expected_moved + expected_left) - set(moved + left))
    misplaced = len(set(expected_moved) ^ set(moved))
    ok = duplicated == 0 and lost == 0 and misplaced == 0
    print(f"  {label}: {len(moved)} in the target, {len(left)} left; lost {lost}, duplicated {duplicated}, "
          f"misplaced {misplaced} -> {'OK' if ok else 'FAILED'}")
    return ok


class Clock:
    """Wall time, this process's CPU and redis-server's CPU of one phase: on a busy machine the CPU figures say
    what the work cost, the wall time what it took."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.wall, self.cpu, self.redis_cpu = time.perf_counter(), time.process_time(), self._redis_cpu()

    def _redis_cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def stop(self) -> tuple[float, str]:
        """(wall seconds, "CPU: ..." text)."""
        wall = time.perf_counter() - self.wall
        cpu, redis_cpu = time.process_time() - self.cpu, self._redis_cpu() - self.redis_cpu
        return wall, f"CPU: mover {cpu:.2f} s, redis-server {redis_cpu:.2f} s"


def machine() -> str:
    load = os.getloadavg()
    return (f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000, help="messages per Lua call (the dashboard's default)")
    parser.add_argument("--migrate", type=int, default=10_000, help="messages for celery.contrib.migrate (0: skip)")
    options = parser.parse_args()
    print(f"bench_queue_move {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-queue-move-") as directory, RedisServer(
        directory=directory, log_path=Path(directory) / "redis.log"
    ) as server:
        url = server.url(0)
        client = redis.Redis.from_url(url)
        print(f"redis-server {server.version} on port {server.port}")
        template = template_message(url)
        browser = RedisQueueBrowser(RedisBrokerInspector(url, {}, 10.0), batch=options.batch)

        started = time.perf_counter()
        ids = fill(client, "bench-source", template, options.messages)
        print(f"filled {options.messages} messages in {time.perf_counter() - started:.1f} s")
        clock = Clock(client)
        moved = browser.move("bench-source", "bench-target", Selection())
        elapsed, cpu = clock.stop()
        print(f"1. move all: {moved} messages in {elapsed:.2f} s = {moved / elapsed:,.0f} messages/s "
              f"(batch {options.batch}); {cpu}")
        ok &= check("verified", ids, [], ids_in(client, "bench-target"), ids_in(client, "bench-source"))
        ok &= ids_in(client, "bench-target") == ids  # and in the same order
        client.delete(*LAYOUT.queue_keys("bench-target"))

        ids = fill(client, "bench-source", template, options.messages, alternate=True)
        wanted, kept = ids[1::2], ids[0::2]
        clock = Clock(client)
        moved = browser.move("bench-source", "bench-target", Selection(name=TYPO))
        elapsed, cpu = clock.stop()
        print(f"2. move one name of two: {moved} of {options.messages} in {elapsed:.2f} s = "
              f"{moved / elapsed:,.0f} moved/s, {options.messages / elapsed:,.0f} read/s; {cpu}")
        ok &= check("verified", wanted, kept, ids_in(client, "bench-target"), ids_in(client, "bench-source"))
        client.delete(*LAYOUT.queue_keys("bench-target"), *LAYOUT.queue_keys("bench-source"))

        if options.migrate:
            ok &= migrate_phase(url, client, template, options.migrate)
        browser.close()
        client.close()
    print("zero lost, zero duplicated in every phase" if ok else "FAILED: see above")
    return 0 if ok else 1


def migrate_phase(url: str, client: redis.Redis, template: dict[str, Any], count: int) -> bool:
    """celery.contrib.migrate.move on the same kind of messages, for comparison."""
    from celery.contrib.migrate import move

    ids = fill(client, "bench-source", template, count)
    app = Celery("bench-migrate", broker=url, set_as_current=False)
    entity: Any = kombu  # untyped: Queue and Exchange
    target = entity.Queue("bench-target", entity.Exchange("bench-target"), routing_key="bench-target")
    clock = Clock(client)
    with app.connection_for_write() as connection:
        move(lambda body, message: target, connection=connection, app=app,
                     source=[entity.Queue("bench-source", entity.Exchange("bench-source"), routing_key="bench-source")],
                     timeout=1.0)
    elapsed, cpu = clock.stop()
    elapsed -= 1.0  # move() ends after 1 s with no message: not moving time
    app.close()
    moved, left = ids_in(client, "bench-target"), ids_in(client, "bench-source")
    print(f"3. celery.contrib.migrate.move: {len(moved)} messages in {elapsed:.2f} s (its final 1 s idle wait "
          f"left out) = {len(moved) / elapsed:,.0f} messages/s; {cpu}")
    result = check("verified", ids, [], moved, left)
    unacked = client.hlen("unacked")
    print(f"  messages left in kombu's unacked hash: {unacked}")
    client.delete(*LAYOUT.queue_keys("bench-target"), *LAYOUT.queue_keys("bench-source"), "unacked",
                  "unacked_index")
    return result


if __name__ == "__main__":
    sys.exit(main())
