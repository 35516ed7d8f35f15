"""A local stand-in for the Unikraft Cloud REST API v1 (instances, templates, checkpoints) with fault injection.

It keeps instance state (with timed transitions: starting -> running, draining -> stopping -> stopped or
standby), speaks the documented envelope `{status, message, data: {instances: [...]}, errors, op_time_us}`
with per-item `status`/`error`/`message`, answers errors with their HTTP status and the same envelope,
checks the bearer token, and can be told to misbehave (`inject`): answer with a status (429 with
Retry-After, 503), answer slowly (timeouts), or answer `partial_success` with our item failed or fine.
Per-item error codes follow the kraftcloud go-sdk (7 Invalid, 8 NotFound, 11 FailedWrongVMState,
12 TimedOut, 19 Quota, 23 AlreadyExists).
"""
from __future__ import annotations

import base64
import json
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from datetime import datetime, UTC
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

INVALID, NOT_FOUND, WRONG_STATE, TIMED_OUT, QUOTA, EXISTS = 7, 8, 11, 12, 19, 23
PUBLIC = ("uuid", "name", "created_at", "state", "private_fqdn", "private_ip", "image", "memory_mb", "vcpus",
          "args", "env", "start_count", "started_at", "stopped_at", "boot_time_us", "tags", "annotations",
          "service_group", "scale_to_zero", "restart_policy", "features", "network_interfaces", "stop_reason")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class Answer(Exception):
    """Raised inside a handler to answer at once with an error envelope."""

    def __init__(self, http: int, code: int | None, message: str, **ident: Any) -> None:
        super().__init__(message)
        self.http, self.code, self.message, self.ident = http, code, message, ident


@dataclass
class Fault:
    op: str
    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    partial: str | None = None  # "ours": our item failed; "other": ours fine, another item failed
    code: int | None = None
    message: str | None = None
    times: int = 1


class UnikraftStub:
    def __init__(self, token: str = "ukc-stub-token", *, boot_ms: int = 20, stop_ms: int = 10,
                 drain_cap_ms: int = 30, images: set[str] | None = None, quota_instances: int | None = None) -> None:
        self.token, self.boot_ms, self.stop_ms, self.drain_cap_ms = token, boot_ms, stop_ms, drain_cap_ms
        self.images = images if images is not None else {"nginx:latest", "unikraft.org/python:3.12"}
        self.quota_instances = quota_instances
        self.records: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # ---- lifecycle of the server -----------------------------------------------------------------
    def start(self) -> UnikraftStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, headers, payload = stub.handle(self.command, self.path, raw, dict(self.headers))
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for key, value in {**headers, "Content-Type": "application/json",
                                       "Content-Length": str(len(data))}.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> UnikraftStub:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- test controls ---------------------------------------------------------------------------
    def inject(self, op: str, **kw: Any) -> None:
        """Make the next `times` calls of `op` (create, get, list, start, stop, suspend, wait, log, delete,
        template, checkpoint, delete_checkpoint, delete_template, list_checkpoint) misbehave."""
        with self.lock:
            self.faults.append(Fault(op, **kw))

    def console(self, ref: str, text: str) -> None:
        with self.lock:
            self._find(ref)["_console"] += text.encode()

    def instances(self, state: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            for rec in self.records.values():
                self._advance(rec)
            return [self._public(r) for r in self.records.values() if state is None or r["state"] == state]

    def calls(self, op: str) -> int:
        return sum(1 for r in self.requests if r["op"] == op)

    # ---- dispatch --------------------------------------------------------------------------------
    def handle(self, method: str, target: str, raw: bytes, headers: dict[str, str]) -> tuple[int, dict, dict]:
        split = urlsplit(target)
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        query = parse_qs(split.query)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._error(Answer(400, 16, "malformed JSON body"))
        op, args = self._route(method, parts)
        auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        self.requests.append({"op": op, "method": method, "path": split.path, "query": query, "body": body,
                              "authorized": auth == f"Bearer {self.token}"})
        if auth != f"Bearer {self.token}":
            return self._error(Answer(401, None, "Unauthorized: missing or invalid API token"))
        if op is None:
            return self._error(Answer(404, None, f"no route for {method} {split.path}"))
        fault = self._take_fault(op)
        if fault and fault.delay:
            time.sleep(fault.delay)
        ident = {"uuid": args[0]} if args else {"name": (body or {}).get("name")} if isinstance(body, dict) else {}
        if fault and fault.status:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            status, hdrs, payload = self._error(Answer(fault.status, fault.code, fault.message or
                                                       f"injected HTTP {fault.status}", **ident))
            return status, {**hdrs, **extra}, payload
        if fault and fault.partial == "ours":
            mine = {"status": "error", "error": fault.code or QUOTA, "message": fault.message or "injected", **ident}
            other = {"status": "success", "uuid": str(uuidlib.uuid4()), "name": "someone-else", "state": "running"}
            return 200, {}, self._envelope([mine, other], "partial_success")
        try:
            with self.lock:
                status, payload = getattr(self, f"op_{op}")(*args, query=query, body=body)
        except Answer as answer:
            return self._error(answer)
        if fault and fault.partial == "other" and status < 300:
            payload["data"]["instances"].append({"status": "error", "error": NOT_FOUND, "name": "ghost",
                                                 "message": "instance 'ghost' not found"})
            payload["status"] = "partial_success"
        return status, {}, payload

    def _route(self, method: str, parts: list[str]) -> tuple[str | None, tuple[str, ...]]:
        if parts[:2] != ["v1", "instances"]:
            return None, ()
        rest = parts[2:]
        if not rest:
            return {"GET": "list", "POST": "create", "DELETE": "bulk_delete"}.get(method), ()
        if len(rest) == 1 and (method, rest[0]) in (("PUT", "start"), ("PUT", "stop"), ("PUT", "suspend"),
                                                    ("GET", "wait"), ("GET", "log")):
            return f"bulk_{rest[0]}", ()
        if rest[0] in ("templates", "checkpoints"):
            kind = rest[0][:-1]
            if len(rest) == 1:
                return {"POST": kind, "GET": f"list_{kind}", "DELETE": f"delete_{kind}"}.get(method), ()
            return {"DELETE": f"delete_{kind}"}.get(method), (rest[1],)
        if len(rest) == 1:
            return {"GET": "get", "DELETE": "delete"}.get(method), (rest[0],)
        action = {("PUT", "start"): "start", ("PUT", "stop"): "stop", ("PUT", "suspend"): "suspend",
                  ("GET", "wait"): "wait", ("GET", "log"): "log"}.get((method, rest[1]))
        return action, (rest[0],)

    def _take_fault(self, op: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.op == op:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    # ---- envelopes -------------------------------------------------------------------------------
    @staticmethod
    def _envelope(items: list[dict[str, Any]], status: str = "success", message: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {"status": status, "data": {"instances": items}, "op_time_us": 42}
        if message:
            out["message"] = message
        return out

    def _error(self, answer: Answer) -> tuple[int, dict, dict]:
        item = {"status": "error", "message": answer.message, **{k: v for k, v in answer.ident.items() if v}}
        if answer.code is not None:
            item["error"] = answer.code
        payload = self._envelope([item], "error", answer.message)
        payload["errors"] = [{"status": answer.http, "message": answer.message}]
        return answer.http, {}, payload

    def _bulk(self, results: list[tuple[int, dict[str, Any]]]) -> tuple[int, dict[str, Any]]:
        """Per-item results -> one envelope: all fine 200, all failed the first failure's status, else partial."""
        failed = [(code, item) for code, item in results if item.get("status") == "error"]
        items = [item for _, item in results]
        if not failed:
            return 200, self._envelope(items)
        if len(failed) == len(results):
            payload = self._envelope(items, "error", failed[0][1]["message"])
            payload["errors"] = [{"status": code, "message": item["message"]} for code, item in failed]
            return failed[0][0], payload
        return 200, self._envelope(items, "partial_success", f"{len(failed)} of {len(items)} items failed")

    # ---- state -----------------------------------------------------------------------------------
    def _find(self, ref: str, state: str | None = None) -> dict[str, Any]:
        for rec in self.records.values():
            if ref in (rec["uuid"], rec["name"]) and (state is None or rec["state"] == state):
                self._advance(rec)
                return rec
        what = state or "instance"
        raise Answer(404, NOT_FOUND, f"{what} '{ref}' not found", uuid=ref)

    def _advance(self, rec: dict[str, Any]) -> None:
        now = time.monotonic()
        while rec["_pending"] and rec["_pending"][0][0] <= now:
            _, state = rec["_pending"].pop(0)
            rec["state"] = state
            if state == "running":
                rec.update(start_count=rec["start_count"] + 1, started_at=_now_iso(),
                           boot_time_us=self.boot_ms * 1000 + 123)
                rec["_console"] += b"Powered by Unikraft \xe2\x9c\x93\nready\n"
            elif state in ("stopped", "standby"):
                rec["stopped_at"] = _now_iso()
                rec["_console"] += f"{'suspended' if state == 'standby' else 'halted'}\n".encode()

    def _boot(self, rec: dict[str, Any], resume: bool = False) -> None:
        rec["state"] = "starting"
        ms = self.boot_ms // 4 if resume else self.boot_ms
        rec["_pending"] = [(time.monotonic() + ms / 1000, "running")]

    def _halt(self, rec: dict[str, Any], final: str, drain_ms: int) -> None:
        now, drain = time.monotonic(), min(self.drain_cap_ms, self.drain_cap_ms if drain_ms < 0 else drain_ms)
        rec["state"] = "draining" if drain > 0 else "stopping"
        rec["_pending"] = [(now + drain / 1000, "stopping"), (now + (drain + self.stop_ms) / 1000, final)]

    def _block(self, rec: dict[str, Any], state: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            self._advance(rec)
            if rec["state"] == state:
                return True
            if time.monotonic() >= deadline:
                return False
            self.lock.release()
            try:
                time.sleep(0.003)
            finally:
                self.lock.acquire()

    @staticmethod
    def _public(rec: dict[str, Any]) -> dict[str, Any]:
        return {k: rec[k] for k in PUBLIC if rec.get(k) is not None}

    # ---- instance operations ---------------------------------------------------------------------
    def op_create(self, *, query: dict, body: Any) -> tuple[int, dict]:
        if not isinstance(body, dict):
            raise Answer(400, 16, "the request body must be a JSON object")
        name = body.get("name") or f"instance-{uuidlib.uuid4().hex[:8]}"
        if any(r["name"] == name for r in self.records.values()):
            raise Answer(409, EXISTS, f"an instance named '{name}' already exists", name=name)
        sources = [k for k in ("image", "template", "checkpoint") if body.get(k)]
        if len(sources) != 1:
            raise Answer(400, INVALID, "exactly one of image, template and checkpoint is required", name=name)
        base: dict[str, Any] = {}
        if sources == ["image"]:
            image = body["image"] if isinstance(body["image"], str) else body["image"].get("url")
            if image not in self.images:
                raise Answer(400, INVALID, f"Invalid image: '{image}' was not found in the registry", name=name)
            base["image"] = image
        else:
            ref = body[sources[0]].get("uuid") or body[sources[0]].get("name")
            source = self._find(ref, sources[0])
            base = {k: source[k] for k in ("image", "args", "env", "memory_mb", "vcpus", "service_group",
                                           "scale_to_zero") if source.get(k) is not None}
        live = [r for r in self.records.values() if r["state"] not in ("template", "checkpoint")]
        if self.quota_instances is not None and len(live) >= self.quota_instances:
            raise Answer(400, QUOTA, f"Quota exceeded: your plan allows {self.quota_instances} instances", name=name)
        s2z = body.get("scale_to_zero")
        if s2z and s2z.get("policy", "on") != "off" and not body.get("service_group"):
            raise Answer(400, INVALID, "scale_to_zero requires a service_group", name=name)
        n = len(self.records) + 2
        rec: dict[str, Any] = {
            "uuid": str(uuidlib.uuid4()), "name": name, "created_at": _now_iso(), "state": "stopped",
            "private_fqdn": f"{name}.internal", "private_ip": f"10.0.{n // 250}.{n % 250 + 2}/24",
            "memory_mb": 128, "vcpus": 1, "args": [], "env": {}, "start_count": 0, **base,
            "tags": list(body.get("tags") or []), "annotations": dict(body.get("annotations") or {}),
            "restart_policy": body.get("restart_policy") or "never", "features": body.get("features"),
            "_pending": [], "_console": f"Booting {name}\n".encode(), "_seq": n,
        }
        for key in ("args", "env", "memory_mb", "vcpus"):
            if body.get(key) is not None:
                rec[key] = body[key]
        if body.get("service_group"):
            rec["service_group"] = {"uuid": str(uuidlib.uuid4()), "name": f"{name}-sg",
                                    "domains": [{"fqdn": f"{name}.fra.unikraft.app"}]}
        if s2z:
            rec["scale_to_zero"] = {"enabled": s2z.get("policy", "on") != "off", **s2z}
        if sources == ["checkpoint"]:
            rec["_console"] += b"restored from checkpoint\n"
        rec["network_interfaces"] = [{"uuid": str(uuidlib.uuid4()), "private_ip": rec["private_ip"]}]
        self.records[rec["uuid"]] = rec
        if body.get("autostart", True):
            self._boot(rec)
            if body.get("timeout_s"):
                self._block(rec, "running", body["timeout_s"])
        return 200, self._envelope([{"status": "success", **self._public(rec)}])

    def op_list(self, *, query: dict, body: Any) -> tuple[int, dict]:
        details = query.get("details", ["false"])[0] == "true"
        wanted_tags = [t for t in query.get("tags", [""])[0].split(",") if t]
        names, uuids = query.get("name", []), query.get("uuid", [])
        recs = sorted(self.records.values(), key=lambda r: r["_seq"])
        for rec in recs:
            self._advance(rec)
        view = (lambda r: {"status": "success", **self._public(r)}) if details else \
            (lambda r: {"status": "success", "uuid": r["uuid"], "name": r["name"]})
        if names or uuids:
            results = []
            for ref in names + uuids:
                hit = next((r for r in recs if ref in (r["uuid"], r["name"])), None)
                results.append((200, view(hit)) if hit else
                               (404, {"status": "error", "error": NOT_FOUND, "name": ref,
                                      "message": f"instance '{ref}' not found"}))
            return self._bulk(results)
        recs = [r for r in recs if all(t in r["tags"] for t in wanted_tags)]
        if query.get("from"):
            start = next((i for i, r in enumerate(recs) if r["uuid"] == query["from"][0]), len(recs))
            recs = recs[start:]
        recs = recs[: int(query.get("count", ["100"])[0])]
        return 200, self._envelope([view(r) for r in recs])

    def op_get(self, ref: str, *, query: dict, body: Any) -> tuple[int, dict]:
        return 200, self._envelope([{"status": "success", **self._public(self._find(ref))}])

    def _transition(self, ref: str, op: str, body: Any) -> tuple[int, dict]:
        rec = self._find(ref)
        previous, drain = rec["state"], int((body or {}).get("drain_timeout_ms") or 0)
        if previous in ("template", "checkpoint"):
            raise Answer(400, WRONG_STATE, f"cannot {op} a {previous}", uuid=rec["uuid"])
        if op == "start":
            if previous in ("draining", "stopping"):
                raise Answer(400, WRONG_STATE, f"instance is {previous}", uuid=rec["uuid"])
            if previous in ("stopped", "standby"):
                self._boot(rec, resume=previous == "standby")
            if (body or {}).get("timeout_s"):
                self._block(rec, "running", body["timeout_s"])
        elif op == "stop":
            if previous in ("running", "starting"):
                self._halt(rec, "stopped", drain)
            elif previous == "standby":
                rec.update(state="stopped", _pending=[])
        elif op == "suspend":
            if previous in ("stopped", "starting"):
                raise Answer(400, WRONG_STATE, f"instance is {previous}, not running", uuid=rec["uuid"])
            if previous == "running":
                self._halt(rec, "standby", drain)
        item = {"status": "success", "uuid": rec["uuid"], "name": rec["name"], "state": rec["state"],
                "previous_state": previous}
        return 200, self._envelope([item])

    def op_start(self, ref: str, *, query: dict, body: Any) -> tuple[int, dict]:
        return self._transition(ref, "start", body)

    def op_stop(self, ref: str, *, query: dict, body: Any) -> tuple[int, dict]:
        return self._transition(ref, "stop", body)

    def op_suspend(self, ref: str, *, query: dict, body: Any) -> tuple[int, dict]:
        return self._transition(ref, "suspend", body)

    def op_wait(self, ref: str, *, query: dict, body: Any) -> tuple[int, dict]:
        rec, body = self._find(ref), body or {}
        seconds = body.get("timeout_s") or (body.get("timeout_ms") or 0) / 1000
        wanted = body.get("state", "running")
        if self._block(rec, wanted, float(seconds)):
            return 200, self._envelope([{"status": "success", "uuid": rec["uuid"], "name": rec["name"],
                                         "state": rec["state"]}])
        item = {"status": "error", "error": TIMED_OUT, "uuid": rec["uuid"], "name": rec["name"],
                "state": rec["state"], "message": f"timed out waiting for state {wanted}"}
        return 200, self._envelope([item], "error", "Operation timed out")

    def op_log(self, ref: str, *, query: dict, body: Any) -> tuple[int, dict]:
        rec, body = self._find(ref), body or {}
        data: bytes = rec["_console"]
        offset, limit = int(body.get("offset", 0)), int(body.get("limit", 4096))
        start = max(0, len(data) + offset) if offset < 0 else min(offset, len(data))
        chunk = data[start:start + limit]
        item = {"status": "success", "uuid": rec["uuid"], "name": rec["name"], "state": rec["state"],
                "output": base64.b64encode(chunk).decode(), "range": {"start": start, "end": start + len(chunk)},
                "available": {"start": 0, "end": len(data)}}
        return 200, self._envelope([item])

    def op_delete(self, ref: str, *, query: dict, body: Any) -> tuple[int, dict]:
        rec = self._find(ref)
        del self.records[rec["uuid"]]
        return 200, self._envelope([{"status": "success", "uuid": rec["uuid"], "name": rec["name"],
                                     "previous_state": rec["state"]}])

    # ---- bulk forms (what the SDK's idiomatic layer sends): a JSON array of {uuid|name, ...} ---------
    def _each(self, op: str, body: Any) -> tuple[int, dict]:
        results = []
        for entry in body or []:
            ref = entry.get("uuid") or entry.get("name")
            try:
                status, payload = getattr(self, f"op_{op}")(ref, query={}, body=entry)
                results.extend((status, item) for item in payload["data"]["instances"])
            except Answer as answer:
                results.append((answer.http, {"status": "error", "error": answer.code, "uuid": ref,
                                              "message": answer.message}))
        return self._bulk(results)

    def op_bulk_start(self, *, query: dict, body: Any) -> tuple[int, dict]:
        return self._each("start", body)

    def op_bulk_stop(self, *, query: dict, body: Any) -> tuple[int, dict]:
        return self._each("stop", body)

    def op_bulk_suspend(self, *, query: dict, body: Any) -> tuple[int, dict]:
        return self._each("suspend", body)

    def op_bulk_wait(self, *, query: dict, body: Any) -> tuple[int, dict]:
        return self._each("wait", body)

    def op_bulk_log(self, *, query: dict, body: Any) -> tuple[int, dict]:
        return self._each("log", body)

    def op_bulk_delete(self, *, query: dict, body: Any) -> tuple[int, dict]:
        return self._each("delete", body)

    # ---- templates and checkpoints ---------------------------------------------------------------
    def op_template(self, *, query: dict, body: Any) -> tuple[int, dict]:
        results = []
        for entry in body or []:
            ref = entry.get("uuid") or entry.get("name")
            try:
                rec = self._find(ref)
            except Answer as answer:
                results.append((404, {"status": "error", "error": NOT_FOUND, "uuid": ref, "message": answer.message}))
                continue
            rec.update(state="template", _pending=[])
            results.append((200, {"status": "success", "uuid": rec["uuid"], "name": rec["name"], "state": "template"}))
        return self._bulk(results)

    def op_checkpoint(self, *, query: dict, body: Any) -> tuple[int, dict]:
        results = []
        for entry in body or []:
            source_ref = (entry.get("from") or {}).get("uuid") or (entry.get("from") or {}).get("name")
            name = entry.get("name") or f"checkpoint-{uuidlib.uuid4().hex[:8]}"
            if any(r["name"] == name for r in self.records.values()):
                results.append((409, {"status": "error", "error": EXISTS, "name": name,
                                      "message": f"a checkpoint named '{name}' already exists"}))
                continue
            try:
                source = self._find(source_ref)
            except Answer as answer:
                results.append((404, {"status": "error", "error": NOT_FOUND, "message": answer.message}))
                continue
            cp = {**{k: v for k, v in source.items() if not k.startswith("_")}, "uuid": str(uuidlib.uuid4()),
                  "name": name, "state": "checkpoint", "tags": list(entry.get("tags") or []), "annotations": {},
                  "_pending": [], "_console": source["_console"], "_seq": len(self.records) + 2}
            self.records[cp["uuid"]] = cp
            results.append((200, {"status": "success", "uuid": cp["uuid"], "name": name, "state": "checkpoint"}))
        return self._bulk(results)

    def _list_kind(self, kind: str, query: dict) -> tuple[int, dict]:
        names = query.get("name", [])
        recs = [r for r in self.records.values() if r["state"] == kind]
        if names:
            return self._bulk([
                (200, {"status": "success", **self._public(hit)}) if (hit := next(
                    (r for r in recs if n in (r["name"], r["uuid"])), None)) else
                (404, {"status": "error", "error": NOT_FOUND, "name": n, "message": f"{kind} '{n}' not found"})
                for n in names])
        return 200, self._envelope([{"status": "success", **self._public(r)} for r in recs])

    def op_list_checkpoint(self, *, query: dict, body: Any) -> tuple[int, dict]:
        return self._list_kind("checkpoint", query)

    def op_list_template(self, *, query: dict, body: Any) -> tuple[int, dict]:
        return self._list_kind("template", query)

    def _delete_kind(self, kind: str, refs: list[str]) -> tuple[int, dict]:
        results = []
        for ref in refs:
            try:
                rec = self._find(ref, kind)
            except Answer as answer:
                results.append((404, {"status": "error", "error": NOT_FOUND, "uuid": ref, "message": answer.message}))
                continue
            del self.records[rec["uuid"]]
            results.append((200, {"status": "success", "uuid": rec["uuid"], "name": rec["name"]}))
        return self._bulk(results)

    def op_delete_checkpoint(self, *args: str, query: dict, body: Any) -> tuple[int, dict]:
        return self._delete_kind("checkpoint", list(args) or [e.get("uuid") or e.get("name") for e in body or []])

    def op_delete_template(self, *args: str, query: dict, body: Any) -> tuple[int, dict]:
        return self._delete_kind("template", list(args) or [e.get("uuid") or e.get("name") for e in body or []])
