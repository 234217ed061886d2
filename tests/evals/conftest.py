from tests.jobs.conftest import fake_engine, service  # noqa: F401 (fixtures)
from tests.webhooks.conftest import receiver  # noqa: F401 (fixture)
