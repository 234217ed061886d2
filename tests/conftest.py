"""Shared fixtures: the real SmolLM2-135M model directory and tiny random models of each supported architecture."""
from __future__ import annotations

import faulthandler
import os
import sys

# Triton kernels run in its interpreter on CPU; the flag must be set before anything imports triton (transformers
# does), or it has no effect. With TIDE_TEST_DEVICE=cuda the kernel tests compile them for the GPU instead
# (tests/helpers/kernel_device.py).
if os.environ.get("TIDE_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The checkout's top-level folders (kernels/, engine/, ...) install as tide.*; on sys.path (`python -m pytest` puts
# the working directory there) `kernels/` would shadow Hugging Face's `kernels`, which transformers imports.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _REPO]

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.helpers.fake_engine import FakeEngine
from tests.helpers.models import TINY_CONFIGS
from tests.helpers.receiver import Receiver
from tide.engine.loader import load_tokenizer, resolve_model
from tide.workers.engine_service import EngineService
from tide.workers.processes import free_port


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """HF directory of SmolLM2-135M-Instruct (converted from the packaged GGUF on first use, then cached)."""
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: tiny_model_dir(kind) -> HF directory of a seeded random model, kind one of TINY_CONFIGS.

    Each kind is built once per session and saved with SmolLM2's tokenizer beside it.
    """
    tokenizer = load_tokenizer(smollm2_dir)
    built: dict[str, Path] = {}

    def build(kind: str) -> Path:
        if kind not in built:
            config = TINY_CONFIGS[kind]()
            config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
            config.pad_token_id = tokenizer.pad_token_id
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            path = tmp_path_factory.mktemp(f"tiny-{kind}")
            model.save_pretrained(path, safe_serialization=True)  # also writes architectures and generation config
            tokenizer.save_pretrained(path)
            built[kind] = path
        return built[kind]

    return build


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def service(fake_engine: FakeEngine):
    """An engine service around the fake engine (job-side tests without a model)."""
    svc = EngineService(fake_engine, idle_wait_s=0.01)
    yield svc
    svc.close()


@pytest.fixture
def receiver():
    """receiver(answers, started=True, ...) -> a real webhook receiver on a free port, stopped afterwards."""
    made: list[Receiver] = []

    def make(answers: list[int] | None = None, started: bool = True, **kwargs) -> Receiver:
        r = Receiver(free_port(), answers, **kwargs)
        made.append(r.start() if started else r)
        return r

    yield make
    for r in made:
        r.stop()


# Fixtures that start real processes (redis-server, moto, workers, the API): their tests are `integration`.
PROCESS_FIXTURES = {"api_app", "services", "worker", "stack"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark what selects: `slow` on every test that needs SmolLM2's files (its weights, or its tokenizer beside a
    tiny model), `integration` on every test under tests/integration or using a fixture that starts processes."""
    integration_dir = Path(__file__).parent / "integration"
    for item in items:
        if "smollm2_dir" in item.fixturenames:
            item.add_marker(pytest.mark.slow)
        if integration_dir in Path(item.path).parents or PROCESS_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A thread a test left blocked would hold this process open after the summary, until CI's time limit: give
    the exit a minute, then print every thread's stack and fail."""
    faulthandler.dump_traceback_later(60, exit=True, file=sys.__stderr__)
