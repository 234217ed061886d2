"""The API app in this process over a real redis-server and local storage (no workers: tasks just wait queued)."""
from __future__ import annotations

import pytest

from tests.helpers.api import KEY, OTHER_KEY
from tide.settings import Settings
from tide.workers.processes import start_redis, stop


@pytest.fixture(scope="session")
def api_app(tmp_path_factory):
    from tide.api.app import create_app
    from tide.api.services import Services

    workdir = tmp_path_factory.mktemp("api")
    process, url = start_redis(workdir)
    # Models need no live worker here (tests of that check swap the settings); keys may read and write s3://b/.
    settings = Settings(_env_file=None, redis_url=url, storage=str(workdir / "storage"), api_keys=[KEY, OTHER_KEY],
                        max_request_bytes=64 * 1024, max_upload_bytes=4 * 2**20, accept_unserved=True,
                        api_key_policies={"*": {"read": ["s3://b/"], "write": ["s3://b/"]}})
    try:
        yield create_app(Services.from_settings(settings))
    finally:
        stop(process)
