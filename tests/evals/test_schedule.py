"""The scheduler's rules on fake Redis: one leader, one run per (suite, slot), missed slots within the grace window,
and runs a dead scheduler left unfinished."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from types import SimpleNamespace

import fakeredis
import pytest

import tide.workers.eval_cron as cron_module
from tide.jobs.evals.schedule import latest_slot, recent_slots
from tide.jobs.evals.suites import Suite
from tide.jobs.storage import StorageConfig
from tide.workers.eval_cron import EvalCron

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()


def suite(schedule: str, zone: str = "UTC") -> Suite:
    return Suite(dataset="d.jsonl", history="h", schedule=schedule, timezone=zone)


@pytest.fixture
def runs(monkeypatch):
    done: list[tuple[str, float]] = []

    def fake_run_suite(name, suite, executor, storage, outbox, scheduled_for, run_id, clock, harness):
        done.append((run_id, scheduled_for))
        return SimpleNamespace(status="passed", score=1.0, regressions=[])

    monkeypatch.setattr(cron_module, "run_suite", fake_run_suite)
    return done


def make(client, clock, **kwargs) -> EvalCron:
    return EvalCron({"tick": suite("* * * * * */5")}, client, executor=None, storage=StorageConfig(), outbox=None,
                    courier=None, clock=lambda: clock[0], **kwargs)


def now_run(fn, *args):
    fn(*args)


def test_two_schedulers_fire_each_slot_once_and_a_missed_slot_within_grace_once(runs):
    client, clock = fakeredis.FakeRedis(), [T0 + 2]
    a, b = make(client, clock, grace_s=10), make(client, clock, grace_s=10)
    for _ in range(30):
        a.tick(now_run)
        b.tick(now_run)
        clock[0] += 1
    slots = [slot for _, slot in runs]
    assert slots == [T0 + 5 * i for i in range(7)]  # T0 itself was missed by 2 s: within grace, run once
    assert len({run_id for run_id, _ in runs}) == 7 and a.leading != b.leading


def test_missed_slots_outside_the_grace_window_are_skipped(runs):
    client, clock = fakeredis.FakeRedis(), [T0 + 2]
    make(client, clock, grace_s=1).tick(now_run)
    assert runs == []


def test_a_run_left_unfinished_by_a_dead_scheduler_runs_again_under_its_run_id(runs):
    client, clock = fakeredis.FakeRedis(), [T0 + 1]
    dead = make(client, clock, grace_s=10, lock_ttl_s=0.1)
    fired = dead.tick(lambda fn, *args: None)  # claims T0, then dies before running it
    assert len(fired) == 1 and runs == []
    heir = make(client, clock, grace_s=10, lock_ttl_s=0.1)
    time.sleep(0.35)  # the dead one's lock (0.1 s) and run lease (0.3 s) lapse
    assert heir.tick(now_run) == fired and runs == [(fired[0], T0)]
    assert heir.tick(now_run) == [] and dead.tick(now_run) == []


def test_slots_are_computed_in_the_suite_zone_and_kept_in_utc():
    paris = suite("30 2 * * *", "Europe/Paris")
    summer = datetime(2026, 7, 1, 12, 0, tzinfo=timezone.utc).timestamp()
    assert datetime.fromtimestamp(latest_slot(paris, summer), timezone.utc).hour == 0  # 02:30 CEST = 00:30 UTC
    assert len(recent_slots(suite("0 * * * *"), summer - 3 * 3600, summer)) == 3
    assert latest_slot(Suite(dataset="d", history="h"), summer) is None


def test_a_leader_whose_tick_was_late_fires_every_slot_it_passed_but_a_restart_only_the_latest():
    from tide.jobs.evals.schedule import SlotPicker

    picker = SlotPicker({"tick": suite("* * * * * */5")}, grace_s=60)
    picker.restart(T0 + 1)
    assert picker.due(T0 + 1) == [("tick", T0)]  # started late: the missed slot once, not the whole window
    assert picker.due(T0 + 16) == [("tick", T0 + 5), ("tick", T0 + 10), ("tick", T0 + 15)]  # a stalled tick
    picker.restart(T0 + 40)
    assert picker.due(T0 + 40) == [("tick", T0 + 40)]
