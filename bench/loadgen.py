"""The external load generators of bench/lease.py: wrk and h2load, run as processes for a fixed time or count,
their latencies read back (h2load's per-request log, wrk's percentiles).

Which one drives a measurement changes its tail on a machine where the generator shares the cores with the server
and PostgreSQL. With the engine beside the api, on the same server, pool and second, wrk's p99 for Connect JSON
Lease was 33-98 ms where h2load --h1 saw 19-29 ms (10 pairs), at the same rate and p50, with the same requests byte
for byte, the same 4:4 spread of connections over the api's workers and ~40 µs of generator CPU per request each;
on /healthz 7.7-9.5 ms against 3.1-4.5 ms. Part of it is the server's: timed inside the api, from reading a request
to writing its answer, the p99 was 27.8 and 30.7 ms under wrk against 22.3 and 23.8 ms under h2load in two of three
pairs (17.3 against 21.0 in the third), so the shape of wrk's traffic costs the server a longer tail as well as
measuring one. Against a bare uvicorn app beside CPU hogs the two agree. bench/lease.py drives Connect JSON with
h2load, as it does gRPC, and prints wrk's figures beside it (`generator_check`, the `wrk` row): neither stands for
every real client."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

WRK_LEASE = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
wrk.body = '{"pool":"%(pool)s","serviceTag":"bench"}'
"""

WRK_RETURN = """\
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  ids = {}
  for line in io.lines("%(ids)s") do table.insert(ids, line) end
  i = tid + 1
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
function request()
  local id = ids[i] or "exhausted"
  i = i + %(threads)d
  return wrk.format(nil, nil, nil, '{"instance":"' .. id .. '","serviceTag":"bench"}')
end
"""


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_wrk(url: str, script: str | None, clients: int, seconds: float) -> dict:
    """wrk -t2 for `seconds` (whole seconds), the Lua `script` (None: a plain GET); non-2xx answers are errors."""
    cmd = ["wrk", "-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{max(1, round(seconds))}s", "--latency"]
    name = None
    if script is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(script)
        name = f.name
        cmd += ["-s", name]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    if name:
        os.unlink(name)

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    elapsed = max(1, round(seconds))
    return {"rps": (total - errors) / elapsed, "p50": ms("50%"), "p99": ms("99%"), "ok": total - errors,
            "errors": errors}


def _h2load(args: list[str], body: bytes | None) -> tuple[list[tuple[int, float]], str]:
    """Runs h2load with a per-request log: (HTTP status, seconds) per request, and its summary."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-h2load-"))
    try:
        if body is not None:
            (tmp / "body").write_bytes(body)
            args = ["-d", str(tmp / "body"), *args]
        out = subprocess.run(["h2load", "--log-file", str(tmp / "log"), *args], capture_output=True, text=True,
                             check=True).stdout
        rows = [line.split("\t") for line in (tmp / "log").read_text().splitlines() if line.strip()]
        return [(int(r[1]), int(r[2]) / 1e6) for r in rows], out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_h2load_h1(url: str, headers: dict[str, str], body: bytes | None, clients: int, seconds: float) -> dict:
    """HTTP/1.1 load from h2load --h1 for `seconds` (whole seconds): one keep-alive connection and one request
    in flight per client, two threads (as wrk -t2); POST of `body` (None: GET). Non-200 answers are errors."""
    args = ["--h1", "-D", str(max(1, round(seconds))), "-c", str(clients), "-m", "1", "-t", str(min(clients, 2))]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    got, _ = _h2load([*args, url], body)
    lat = [t for status, t in got if status == 200]
    elapsed = max(1, round(seconds))
    return {"rps": len(lat) / elapsed, "p50": pct(lat, 0.5) * 1000, "p99": pct(lat, 0.99) * 1000, "ok": len(lat),
            "errors": len(got) - len(lat)}


def run_h2load_grpc(target: str, path: str, token: str, message: bytes, clients: int, requests: int) -> dict:
    """gRPC load from h2load (apt-get install nghttp2-client): C, one HTTP/2 connection and one call in flight per
    client, the gRPC framing of `message` as the body. It sees HTTP statuses, not gRPC ones (an error is HTTP
    200 with grpc-status in the trailers), so a fixed number of calls is sent and what succeeded is counted in
    the database by the caller (`ok` is filled in there)."""
    args = ["-n", str(requests), "-c", str(clients), "-m", "1", "-t", str(min(clients, 2)),
            "-H", "content-type: application/grpc", "-H", "te: trailers", "-H", f"authorization: Bearer {token}",
            f"http://{target}{path}"]
    got, out = _h2load(args, b"\x00" + len(message).to_bytes(4, "big") + message)
    took = re.search(r"finished in ([\d.]+)(ms|s)", out)
    elapsed = float(took.group(1)) / (1000 if took.group(2) == "ms" else 1)
    lat = [t for _, t in got]
    return {"rps": len(lat) / elapsed, "p50": pct(lat, 0.5) * 1000, "p99": pct(lat, 0.99) * 1000, "sent": len(lat),
            "elapsed": elapsed}


def generator_check(base: str, clients: int, seconds: float) -> dict[str, float]:
    """p99 (ms) of GET `base`/healthz under each generator, back to back: what a generator adds to a tail."""
    return {"wrk": run_wrk(f"{base}/healthz", None, clients, seconds)["p99"],
            "h2load": run_h2load_h1(f"{base}/healthz", {}, None, clients, seconds)["p99"]}
