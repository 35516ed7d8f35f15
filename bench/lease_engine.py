"""bench/lease.py's measurements that need more than seeded rows: a pod pool the engine filled, and the
reservation wake-up latency (instance ready -> the waiting Lease call's answer)."""
from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SERVICE = "intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService"


def _post(url: str, token: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _ready(pool_id: str) -> int:
    import sqlalchemy as sa

    from app.db import session_scope
    from app.domain.claims import READY
    from app.models import Instance

    with session_scope() as s:
        return s.execute(sa.select(sa.func.count()).select_from(Instance)
                         .where(Instance.pool_id == pool_id, READY)).scalar_one()


@dataclass
class PodPool:
    name: str
    pool_id: str
    size: int
    logdir: Path

    def refill(self, timeout: float = 600) -> None:
        """Wait until the engine has the pool back at its size (it backfills what the last run leased)."""
        deadline = time.monotonic() + timeout
        while _ready(self.pool_id) < self.size:
            if time.monotonic() > deadline:
                raise SystemExit(f"the pod pool has {_ready(self.pool_id)}/{self.size} ready after {timeout:.0f} s; "
                                 f"see {self.logdir}")
            time.sleep(0.5)


def fill_pod_pool(org_id: str, token: str, port: int, size: int, logdir: Path) -> PodPool:
    """A pod pool of `size` (POST /serverless/v1/podpools, as a user makes one) on a fake-cloud runner,
    filled by the engine processes bench/lease.py started."""
    from app.db import session_scope
    from app.domain import tenancy
    from app.models import Pool
    from workers.providers.catalog import install as install_catalog

    install_catalog()
    with session_scope() as s:
        tenancy.create_runner(org_id, "bench-fake", "fake", {"namespace": "bench", "boot_ms": 20, "start_ms": 10,
                                                            "stop_ms": 5, "delete_ms": 5}, session=s)
    name = "bench-pods"
    status, body = _post(f"http://127.0.0.1:{port}/serverless/v1/podpools", token, {"pools": [
        {"id": name, "group": "default", "size": size, "max_size": size, "reuse": False,
         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]})
    if status != 200 or body.get("code") not in (None, 0):
        raise SystemExit(f"could not create the pod pool: {status} {body}")
    import sqlalchemy as sa

    with session_scope() as s:
        pool_id = s.execute(sa.select(Pool.id).where(Pool.organization_id == org_id, Pool.name == name)).scalar_one()
    began = time.monotonic()
    pods = PodPool(name, pool_id, size, logdir)
    pods.refill()
    print(f"pod pool {name!r}: {size} instances filled by the engine in {time.monotonic() - began:.1f} s")
    return pods


def time_wakeups(org_id: str, token: str, port: int, n: int) -> dict:
    """`n` times: a Lease call waits on its reservation on an empty pool; an instance becomes ready and the
    applier's step hands it over (reservations.assign_ready_instance in one transaction, the wake-up
    published after commit, as workers/events.py does); measured from the start of that step to the
    waiting call's answer (one clock: same machine)."""
    from app.db import session_scope
    from app.domain import effects, pools, reservations
    from app.domain.states import PoolKind
    from app.models import Reservation
    from tests.leasing import add_ready
    from workers.celery_app import dispatch_effect, reconfigure

    reconfigure()
    effects.set_dispatcher(dispatch_effect)
    with session_scope() as s:
        pool = pools.insert_pool(pools.new_pool(org_id, kind=PoolKind.NAMED, name="bench-wake", min_size=0,
                                                max_size=n, empty_policy="reserve"), session=s, conflict="exists")
    url = f"http://127.0.0.1:{port}/api/{SERVICE}/Lease"
    waits: list[float] = []
    for i in range(n + 2):  # the first two warm the server's wake-up path and are not counted
        rid = f"wake-{i}"
        answered: dict = {}

        def call(rid: str = rid, answered: dict = answered) -> None:
            answered["status"], _ = _post(url, token, {"pool": "bench-wake", "reservationId": rid})
            answered["at"] = time.perf_counter()

        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 10
        while True:  # the call is waiting once its reservation is queued
            with session_scope() as s:
                res = s.query(Reservation).filter_by(organization_id=org_id, client_id=rid).first()
                if res is not None and res.state == "waiting":
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"reservation {rid} never queued")
            time.sleep(0.01)
        time.sleep(0.05)  # the server is in its wait, not still answering the first unit of work
        began = time.perf_counter()
        (iid,) = add_ready(pool, 1)
        with session_scope() as s:
            reservations.assign_ready_instance(iid, session=s)
        t.join(15)
        if answered.get("status") != 200:
            raise SystemExit(f"wake-up call {rid} answered {answered.get('status')}")
        if i >= 2:
            waits.append((answered["at"] - began) * 1000)
    waits.sort()
    return {"p50": statistics.median(waits), "p99": waits[min(len(waits) - 1, round(0.99 * (len(waits) - 1)))],
            "max": waits[-1]}
