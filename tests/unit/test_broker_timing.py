"""No task countdown reaches the broker's visibility timeout (a countdown past it would be delivered
twice while it waits), and that timeout is short, so a dead worker's tasks come back within seconds."""
from __future__ import annotations

import pytest

from config.celery import celery_config
from config.settings import get_settings


@pytest.fixture
def fresh_settings(monkeypatch):
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.mark.parametrize("visibility", [5, 30, 600])
def test_every_countdown_stays_below_the_visibility_timeout(fresh_settings, visibility):
    from workers.operations import backoff

    fresh_settings.setenv("WARMPOOL_ENGINE__BROKER_VISIBILITY_SECONDS", str(visibility))
    fresh_settings.setenv("WARMPOOL_ENGINE__BACKOFF_MAX_SECONDS", "100000")
    get_settings.cache_clear()
    worst = max(backoff(retries, retry_after) for retries in range(0, 40) for retry_after in (None, 0, 3, 1e9)
                for _ in range(5))
    assert worst < visibility
    assert celery_config(get_settings())["broker_transport_options"]["visibility_timeout"] == visibility


def test_the_default_visibility_timeout_is_seconds_and_late_acks_redeliver(fresh_settings):
    conf = celery_config(get_settings())
    assert conf["broker_transport_options"]["visibility_timeout"] <= 60
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]


def test_a_provider_retry_after_is_honoured_up_to_the_cap(fresh_settings):
    from workers.operations import backoff

    fresh_settings.setenv("WARMPOOL_ENGINE__BROKER_VISIBILITY_SECONDS", "40")
    get_settings.cache_clear()
    assert backoff(0, 20.0) >= 20.0
    assert backoff(0, 500.0) == 30.0
