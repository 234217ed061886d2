"""A simulated fleet against one real redis-server: how many workers before lease renewal or Redis gives out.

    python -P -m tide.benchmarks.fleet [--sizes 250,1000,4000,16000] [--leases 4] [--seconds 30]

Each simulated worker is a coroutine doing what a `tide worker` does to Redis: it holds `--leases` shard leases
and renews them every `--renew-s` with the worker's own pipeline (`LeaseBook` commands), publishes a heartbeat every
`--heartbeat-s`, and sweeps for lapsed leases and due deadlines every `--reaper-s`, all staggered. Workers are spread
over `--processes` client processes. Per fleet size it prints renewal round-trip p50/p99/max, the Redis commands/s,
and Redis's CPU use (its own `used_cpu_*` counters over the run), and flags the first size whose renewal p99 exceeds
`--p99-ms` or whose Redis CPU exceeds `--redis-cpu`. The client processes share the machine with Redis: their own
CPU use is printed too, since a saturated client inflates the round trips it measures.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import tempfile
import time
from pathlib import Path

from tide.jobs import keys
from tide.jobs.leases.book import Lease, queue_renewals, renewed


async def _worker(client, index: int, args: argparse.Namespace, until: float, latencies: list[float]) -> None:
    rng = random.Random(index)
    leases = [Lease(f"job_fleet{index % 97}", index * args.leases + i, 1) for i in range(args.leases)]
    await asyncio.sleep(rng.uniform(0, args.renew_s))  # workers start at different moments
    next_beat = next_sweep = time.monotonic()
    first = True
    while time.monotonic() < until:
        started = time.monotonic()
        async with client.pipeline(transaction=False) as pipe:
            queue_renewals(pipe, leases, time.time() + 30)
            held = renewed(await pipe.execute())
        if not first:  # a worker's first round also opens connections: steady renewals are what a fleet lives on
            latencies.append(time.monotonic() - started)
        first = False
        if not all(held):
            raise RuntimeError(f"worker {index} lost a lease it never gave up")
        if started >= next_beat:
            await client.set(keys.worker(f"sim-{index}"), "{}", ex=30)
            next_beat = started + args.heartbeat_s
        if started >= next_sweep:
            await client.zrangebyscore(keys.LEASES, "-inf", time.time(), start=0, num=100)
            await client.zrangebyscore(keys.DEADLINES, "-inf", time.time(), start=0, num=100)
            next_sweep = started + args.reaper_s
        await asyncio.sleep(max(0.0, args.renew_s - (time.monotonic() - started)))


async def _client_main(url: str, first: int, count: int, args: argparse.Namespace) -> list[float]:
    import redis.asyncio as aredis

    # Simulated workers share a pool of connections (one each would pass Redis's 10,000-client default long before
    # its CPU gives out); waiting for a free one counts in the renewal's round trip, so the figure errs high.
    pool = aredis.BlockingConnectionPool.from_url(url, max_connections=max(64, count // 8), timeout=None)
    client = aredis.Redis(connection_pool=pool)
    until = time.monotonic() + args.seconds
    latencies: list[float] = []
    try:
        async with client.pipeline(transaction=False) as pipe:  # grant every lease first
            for index in range(first, first + count):
                for i in range(args.leases):
                    pipe.zadd(keys.LEASES, {Lease(f"job_fleet{index % 97}", index * args.leases + i, 1).member:
                                            time.time() + 30})
            await pipe.execute()
        await asyncio.gather(*(_worker(client, i, args, until, latencies) for i in range(first, first + count)))
    finally:
        await client.aclose()
    return latencies


def _client_process(url: str, first: int, count: int, args: argparse.Namespace, out) -> None:
    started = time.process_time()
    latencies = asyncio.run(_client_main(url, first, count, args))
    out.put((latencies, time.process_time() - started))


def measure(url: str, size: int, args: argparse.Namespace) -> dict[str, float]:
    import redis

    client = redis.Redis.from_url(url)
    client.flushall()
    before_cpu, before_cmds, started = _redis_cpu(client), _commands(client), time.monotonic()
    out = mp.get_context("spawn").Queue()
    share = -(-size // args.processes)
    procs = [mp.get_context("spawn").Process(target=_client_process, args=(url, i * share, min(share, size - i * share),
                                                                         args, out))
             for i in range(args.processes) if i * share < size]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    wall = time.monotonic() - started
    latencies = sorted(x for lat, _ in results for x in lat)
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {"workers": size, "renewals": len(latencies), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "max_ms": latencies[-1] * 1000, "redis_cmds_per_s": (_commands(client) - before_cmds) / wall,
            "redis_cpu": (_redis_cpu(client) - before_cpu) / wall,
            "client_cpu": sum(cpu for _, cpu in results) / wall}


def _redis_cpu(client) -> float:
    info = client.info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


def _commands(client) -> int:
    return client.info("stats")["total_commands_processed"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.fleet", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="250,1000,4000,16000", help="fleet sizes to try, in order")
    p.add_argument("--leases", type=int, default=4, help="shard leases each worker holds (its --concurrency)")
    p.add_argument("--seconds", type=float, default=30.0, help="how long each size runs")
    p.add_argument("--renew-s", type=float, default=5.0, help="TIDE_LEASE_RENEW_S")
    p.add_argument("--heartbeat-s", type=float, default=5.0)
    p.add_argument("--reaper-s", type=float, default=5.0, help="TIDE_REAPER_INTERVAL_S")
    p.add_argument("--processes", type=int, default=2, help="client processes the simulated workers share")
    p.add_argument("--p99-ms", type=float, default=100.0)
    p.add_argument("--redis-cpu", type=float, default=0.8, help="Redis CPU (cores) taken as saturation")
    return p


def main(argv: list[str] | None = None) -> int:
    from tide.workers.processes import start_redis, stop

    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tide-fleet-") as tmp:
        process, url = start_redis(Path(tmp))
        try:
            print(f"fleet: {args.leases} leases a worker renewed every {args.renew_s:g} s, heartbeats every "
                  f"{args.heartbeat_s:g} s, sweeps every {args.reaper_s:g} s; {args.seconds:g} s per size")
            for size in map(int, args.sizes.split(",")):
                f = measure(url, size, args)
                broken = f["p99_ms"] > args.p99_ms or f["redis_cpu"] > args.redis_cpu
                print(f"{size:>7} workers: renewal p50 {f['p50_ms']:6.1f} ms, p99 {f['p99_ms']:7.1f} ms, max "
                      f"{f['max_ms']:7.1f} ms ({f['renewals']} renewals); redis {f['redis_cmds_per_s']:,.0f} cmd/s, "
                      f"CPU {f['redis_cpu']:.2f} cores; clients CPU {f['client_cpu']:.2f} cores"
                      + ("   <- past the limit" if broken else ""), flush=True)
        finally:
            stop(process)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
