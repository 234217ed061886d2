"""`tide beat` for real: two scheduler processes, real Redis and a real worker, a suite every 5 seconds, and its
webhooks to a receiver that is down at first."""
from __future__ import annotations

import json
import signal
from datetime import datetime

from standardwebhooks import Webhook

from tests.helpers.receiver import Receiver
from tests.helpers.services import SERVED, WEBHOOK_SECRET
from tests.helpers.waiting import until
from tide.workers.processes import free_port, start_beat, stop

PERIOD_S = 5


def test_two_beats_run_each_slot_once_and_deliver_its_webhook_once(services, worker, tmp_path):
    hook = Receiver(free_port())  # not listening yet
    (tmp_path / "items.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "prompt": f"Say {i}", "expected": ".*"}) + "\n" for i in range(3)))
    (tmp_path / "suites.yaml").write_text(
        f"suites:\n  tick:\n    model: {SERVED}\n    schedule: '* * * * * */{PERIOD_S}'\n"
        f"    dataset: items.jsonl\n    history: history\n    scorer: regex\n"
        f"    sampling: {{temperature: 0, max_tokens: 4}}\n    webhook: {hook.url}\n")
    env = dict(services.env, TIDE_WEBHOOK_ALLOW_PRIVATE="true", TIDE_WEBHOOK_RETRY_SCHEDULE="0,1,1,1,1,1,1,1,1,1",
               TIDE_LOG_LEVEL="INFO")
    args = ("--config", str(tmp_path / "suites.yaml"), "--tick", "0.2", "--lock-ttl", "4", "--grace", "60")
    beats = [start_beat(env, tmp_path / f"beat{i}.log", extra=args) for i in range(2)]
    index = tmp_path / "history" / "tick" / "index.json"
    try:
        until(lambda: index.exists() and len(json.loads(index.read_text())) >= 2, 90, poll_s=0.1)
        leader = next(b for i, b in enumerate(beats) if b"leading" in (tmp_path / f"beat{i}.log").read_bytes())
        leader.send_signal(signal.SIGKILL)  # the other takes over once the lock lapses
        leader.wait()
        # The dead leader's unfinished slots run again once their leases lapse, after later slots have run: no
        # slot is lost when the history closes its gaps (a lost one times this out).
        settled: list[float] = []

        def gapless() -> bool:
            settled[:] = _slots(index)
            return len(settled) >= 5 and _gaps(settled) == {PERIOD_S}

        until(gapless, 120, poll_s=0.1)
        hook.start()
        until(lambda: len(hook.accepted()) >= 4, 30, poll_s=0.1)
    finally:
        for beat in beats:
            stop(beat)
        hook.stop()
    runs = json.loads(index.read_text())
    slots = _slots(index)
    assert len(set(slots)) == len(slots) == len({r["run_id"] for r in runs}), runs  # no slot twice
    assert all(r["n"] == 3 and r["passed"] == 3 for r in runs)
    assert set(settled) <= set(slots)  # runs still in flight at the stop may end later, but none went away
    events = [Webhook(WEBHOOK_SECRET.encode()).verify(body, headers) for headers, body, _ in hook.accepted()]
    ids = [e["data"]["id"] for e in events]
    assert len(ids) == len(set(ids)) and set(ids) <= {r["run_id"] for r in runs}
    assert {e["type"] for e in events} == {"eval.completed"}


def _slots(index) -> list[float]:
    runs = json.loads(index.read_text())
    return sorted(datetime.fromisoformat(r["scheduled_for"].replace("Z", "+00:00")).timestamp() for r in runs)


def _gaps(slots: list[float]) -> set[float]:
    return {b - a for a, b in zip(slots, slots[1:])}
