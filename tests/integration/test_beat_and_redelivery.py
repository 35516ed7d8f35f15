"""Two guarantees the chaos suite leans on, on a real Redis: only one beat sends (a second one started by
mistake stands by), and a dead worker's unacknowledged task is given back soon after the visibility timeout
(kombu alone gives it back only at a worker's start or about every 100 s)."""
from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.redis]


def test_one_beat_holds_the_lock_and_a_flush_hands_it_to_exactly_one(redis_client):
    from workers.beat import BeatLock

    first, second = BeatLock(redis_client, ttl_ms=2000), BeatLock(redis_client, ttl_ms=2000)
    assert first.hold() and not second.hold()
    assert first.hold() and not second.hold()  # renewing is holding
    redis_client.flushall()  # the lock is gone with everything else
    assert second.hold() and not first.hold()  # whoever asks first after the loss, and only it
    second.release()
    assert first.hold()


def test_a_second_beat_sends_nothing_while_the_first_holds_the_lock(redis_client, settings_env, tmp_path, monkeypatch):
    from celery import Celery

    from workers.beat import LockedScheduler

    app = Celery("beat-test", broker=settings_env.redis_url)
    app.conf.beat_schedule = {"sweep": {"task": "warmpool.reconcile_sweep", "schedule": 0.2}}
    sent: list[str] = []
    monkeypatch.setattr(LockedScheduler, "apply_async", lambda self, entry, *a, **k: sent.append(self.lock.token))
    beats = [LockedScheduler(app=app, schedule_filename=str(tmp_path / f"beat{i}")) for i in range(2)]
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            for beat in beats:
                beat.tick()
            time.sleep(0.05)
        assert len(sent) >= 3, "the holder sent nothing"
        assert set(sent) == {beats[0].lock.token}, "the standby beat sent too"
    finally:
        for beat in beats:
            beat.close()


def test_a_dead_workers_unacknowledged_task_is_restored_after_the_visibility_timeout(redis_client, settings_env,
                                                                                      monkeypatch):
    from config.settings import get_settings
    from workers import celery_app as capp

    monkeypatch.setenv("WARMPOOL_ENGINE__BROKER_VISIBILITY_SECONDS", "1")
    get_settings.cache_clear()
    capp.reconfigure()
    try:
        dead = capp.celery_app.connection_for_write()
        queue = dead.SimpleQueue("restore-test")
        queue.put({"n": 1})
        held = queue.get(timeout=5)  # received, never acknowledged: the worker dies holding it
        assert held.payload == {"n": 1}
        assert redis_client.llen("restore-test") == 0
        capp.restore_unacked()
        assert redis_client.llen("restore-test") == 0  # younger than the visibility timeout: still held
        time.sleep(1.2)
        capp.restore_unacked()
        assert redis_client.llen("restore-test") == 1  # back on its queue, for any worker
        assert _receive("restore-test", 5) == {"n": 1}
    finally:
        get_settings.cache_clear()
        capp.reconfigure()


def _receive(name: str, timeout: float) -> dict | None:
    """One message's payload from the queue (acknowledged), or None if none came."""
    from workers import celery_app as capp

    with capp.celery_app.connection_for_write() as conn:
        q = conn.SimpleQueue(name)
        try:
            message = q.get(timeout=timeout)
        except q.Empty:
            return None
        message.ack()
        return message.payload
