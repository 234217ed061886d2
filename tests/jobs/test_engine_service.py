import queue
import threading

import pytest

from tests.helpers.fake_engine import FakeEngine
from tide.engine.sampling_params import SamplingParams
from tide.workers.engine_service import EngineFailed, EngineService


def test_each_thread_gets_exactly_its_own_outputs(service):
    params = SamplingParams(max_tokens=2)
    got: dict[int, list[str]] = {}

    def shard(k: int) -> None:
        sink: queue.Queue = queue.Queue()
        for i in range(25):
            service.submit(f"{k}-{i}", f"prompt {k} {i}", params, 0, sink)
        got[k] = sorted(received(sink, 25))

    threads = [threading.Thread(target=shard, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {k: sorted(f"{k}-{i}" for i in range(25)) for k in range(4)}
    assert service.figures().mean_batch_occupancy > 0.5  # requests from several threads shared the steps


def test_a_refused_request_raises_to_its_caller_and_leaves_no_sink(service):
    with pytest.raises(ValueError, match="empty"):
        service.submit("x", "", SamplingParams(), 0, queue.Queue())
    sink: queue.Queue = queue.Queue()
    service.submit("x", "fine now", SamplingParams(), 0, sink)
    assert received(sink, 1) == ["x"]


def received(sink: queue.Queue, count: int) -> list[str]:
    """The ids of the first `count` outputs on `sink`, which come a list per engine step."""
    ids: list[str] = []
    while len(ids) < count:
        ids += [output.request_id for output in sink.get(timeout=5)]
    assert len(ids) == count, ids
    return ids


def test_a_step_outputs_reach_each_sink_as_one_list():
    service = EngineService(FakeEngine(max_num_seqs=8, step_delay_s=0.05), idle_wait_s=0.01)
    sink: queue.Queue = queue.Queue()
    for i in range(16):  # the first step takes what arrived before it; the rest wait for the next
        service.submit(f"r{i}", f"prompt {i}", SamplingParams(max_tokens=1), 0, sink)
    batches = []
    while sum(map(len, batches)) < 16:
        batches.append(sink.get(timeout=5))
    service.close()
    assert len(batches) <= 3 and max(map(len, batches)) >= 5  # a step's rows came as one list, not one put each


class BrokenEngine(FakeEngine):
    def step(self):
        raise RuntimeError("CUDA error: device lost")


def test_a_failing_step_is_delivered_to_every_waiter():
    service = EngineService(BrokenEngine(), idle_wait_s=0.01)
    sink: queue.Queue = queue.Queue()
    service.submit("a", "some prompt", SamplingParams(), 0, sink)
    failure = sink.get(timeout=5)
    assert isinstance(failure, EngineFailed) and "device lost" in str(failure)
    with pytest.raises(EngineFailed):
        service.submit("b", "next", SamplingParams(), 0, queue.Queue())
    service.close()
