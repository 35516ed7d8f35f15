#!/usr/bin/env python3
"""Summarize a py-spy `record -f raw` file (collapsed stacks): the share of samples per layer (inclusive)
and the hottest frames (self). Usage: python bench/spy_summary.py FILE"""
import sys
import collections
path = sys.argv[1]
self_c: collections.Counter = collections.Counter()
incl: collections.Counter = collections.Counter()
total = 0
buckets = {
 "uvicorn/h11/httptools": ("uvicorn/",),
 "starlette/fastapi": ("starlette/", "fastapi/"),
 "connectrpc": ("connectrpc/",),
 "protobuf json": ("json_format",),
 "sqlalchemy": ("sqlalchemy/",),
 "sqlmodel": ("sqlmodel/",),
 "psycopg": ("psycopg/", "psycopg_pool/"),
 "grpc": ("grpc/", "grpc\\"),
 "asyncio/uvloop": ("asyncio/", "uvloop"),
 "app.domain": ("app/domain/",),
 "app.api": ("app/api/",),
 "redis": ("redis/",),
 "celery/kombu": ("celery/", "kombu/"),
 "threading/concurrent": ("threading.py", "concurrent/"),
 "orjson": ("orjson",),
}
for line in open(path):
    line = line.rstrip()
    if not line:
        continue
    stack, _, n = line.rpartition(" ")
    n = int(n)
    total += n
    frames = stack.split(";")
    self_c[frames[-1]] += n
    seen = set()
    for f in frames:
        for b, pats in buckets.items():
            if b not in seen and any(p in f for p in pats):
                seen.add(b)
                incl[b] += n
print(f"samples: {total}")
print("inclusive share by layer:")
for b, n in incl.most_common():
    print(f"  {100*n/total:5.1f}%  {b}")
print("top self frames:")
for f, n in self_c.most_common(15):
    print(f"  {100*n/total:5.1f}%  {f[:130]}")
