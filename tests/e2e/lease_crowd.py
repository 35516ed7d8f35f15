"""A crowd of Lease clients for the race and load tests: each client has its own gRPC channel (the grpcio
stub generated from our .proto) or its own Connect JSON client, and records every lease it received, so
the database can be checked against what the clients really got."""
from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
import httpx
from google.protobuf.json_format import MessageToDict, Parse

from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb, lease_api_pb2_grpc

SERVICE = "intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService"


@dataclass(frozen=True)
class Got:
    """A lease as a client received it: the instance and the expiry name one lease row."""

    instance: str
    expires: datetime
    client: int = -1


@dataclass
class Tally:
    received: list[Got] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)
    by_transport: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str, got: Got | None = None) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            if got is not None:
                self.received.append(got)


def _got(lease: pb.Lease) -> Got:
    return Got(lease.instance, lease.expires.ToDatetime(tzinfo=UTC))


class GrpcLeaser:
    def __init__(self, target: str, token: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = lease_api_pb2_grpc.VMPoolLeaseServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")]

    def lease(self, pool: str, tag: str, timeout: float) -> tuple[str, Got | None]:
        try:
            resp = self.stub.Lease(pb.LeaseRequest(pool=pool, service_tag=tag), metadata=self.metadata, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name.lower(), None
        return "ok", _got(resp.lease)

    def give_back(self, instance: str, tag: str) -> str:
        try:
            self.stub.Return(pb.ReturnRequest(instance=instance, service_tag=tag), metadata=self.metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc.code().name.lower()
        return "ok"

    def close(self) -> None:
        self.channel.close()


class ConnectLeaser:
    def __init__(self, base: str, token: str) -> None:
        self.http = httpx.Client(base_url=f"{base}/api/{SERVICE}", timeout=60,
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})

    def _post(self, rpc: str, msg, timeout: float) -> tuple[str, dict | None]:
        headers = {"connect-timeout-ms": str(int(timeout * 1000))}
        try:
            # The client gives up at its deadline, as a Connect client does.
            r = self.http.post(f"/{rpc}", content=json.dumps(MessageToDict(msg)), headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            return "deadline_exceeded", None
        if r.status_code != 200:
            return r.json().get("code", f"http_{r.status_code}"), None
        return "ok", r.json()

    def lease(self, pool: str, tag: str, timeout: float) -> tuple[str, Got | None]:
        code, body = self._post("Lease", pb.LeaseRequest(pool=pool, service_tag=tag), timeout)
        if body is None:
            return code, None
        return code, _got(Parse(json.dumps(body), pb.LeaseResponse()).lease)

    def give_back(self, instance: str, tag: str) -> str:
        return self._post("Return", pb.ReturnRequest(instance=instance, service_tag=tag), 30)[0]

    def close(self) -> None:
        self.http.close()


class Crowd:
    """`size` clients, half over gRPC and half over Connect; `round()` releases them together."""

    def __init__(self, size: int, grpc_target: str, http_base: str, token: str) -> None:
        self.clients = [GrpcLeaser(grpc_target, token) if i % 2 == 0 else ConnectLeaser(http_base, token)
                        for i in range(size)]

    def round(self, pool: str, timeout: float, *, give_back: bool) -> Tally:
        """Every client calls Lease once with `timeout`; with `give_back` each returns at once what it got
        (so waiting callers can be served meanwhile). Returns what the clients saw."""
        tally = Tally()
        barrier = threading.Barrier(len(self.clients))

        def run(i: int) -> None:
            client, tag = self.clients[i], f"client-{i}"
            barrier.wait()
            code, got = client.lease(pool, tag, timeout)
            with tally.lock:
                tally.by_transport[f"{'grpc' if isinstance(client, GrpcLeaser) else 'connect'}:{code}"] += 1
            if got is not None:
                got = Got(got.instance, got.expires, i)
            tally.add(code, got)
            if got is not None and give_back:
                returned = client.give_back(got.instance, tag)
                tally.add(f"return:{returned}")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(self.clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a client never finished"
        return tally

    def give_back(self, got: Got) -> str:
        return self.clients[got.client].give_back(got.instance, f"client-{got.client}")

    def close(self) -> None:
        for c in self.clients:
            c.close()
