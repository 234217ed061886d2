from __future__ import annotations

import base64

import pytest

from tests.jobs.conftest import fake_engine, service  # noqa: F401 (fixtures)
from tests.webhooks.receiver import Receiver, free_port

SECRET = "whsec_" + base64.b64encode(b"tide-test-signing-key-0123456789").decode()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(answers: list[int] | None = None, started: bool = True, **kwargs) -> Receiver:
        r = Receiver(free_port(), answers, **kwargs)
        made.append(r.start() if started else r)
        return r

    yield make
    for r in made:
        r.stop()
