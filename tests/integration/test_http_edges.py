"""What a caller gets off the documented paths: {code, message} for any unknown path or method (Connect's
error body under /api, GET included), and /docs that works with no network (its assets are served here)."""
from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_org

LEASE = "/api/intrinsic_proto.vmpoolleaseapi.v1.VMPoolLeaseService"
PREBUILD = "/api/gitpod.v1.PrebuildService"


@pytest.fixture(params=["asgi", "fastapi"])
def client(request, db, effects_log):
    """Both ways the app is served: `warmpool api`'s entry point (Connect routed before FastAPI) and the
    FastAPI app alone (Connect mounted under /api)."""
    from app.main import create_app, create_asgi

    app = create_asgi(grpc=False) if request.param == "asgi" else create_app(dispatcher=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code and body["message"], body
    return body["message"]


@pytest.mark.parametrize("path", ["/nope", "/v1x/nothing", "/serverless/v1/nope", "/serverless/v1/podpools/a/b/c",
                                  "/metrics/extra", "/docs/nope"])
def test_unknown_paths_answer_code_and_message(client, path):
    assert path in error(client.get(path), 404, "not_found")


def test_wrong_methods_answer_code_and_message(client):
    assert "POST" in error(client.post("/healthz"), 405, "method_not_allowed")
    assert "DELETE" in error(client.delete("/readyz"), 405, "method_not_allowed")


def test_route_errors_keep_their_own_shape(client):
    # A route's own refusal is not a routing error: the pod-pool façade keeps its envelope.
    r = client.get("/serverless/v1/podpools")
    assert r.status_code == 401 and r.json()["code"] == 121049


def test_connect_errors_without_a_body_get_one(client):
    token = make_org().token
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    msg = error(client.get(f"{LEASE}/Pools", headers=auth), 405, "unimplemented")
    assert "POST" in msg and "GET" in msg
    error(client.put(f"{PREBUILD}/ListWarmPools", headers=auth), 405, "unimplemented")
    assert "Nope" in error(client.post(f"{PREBUILD}/Nope", headers=auth, json={}), 404, "unimplemented")
    assert "/api/nope.Service" in error(client.post("/api/nope.Service/X", headers=auth, json={}), 404, "unimplemented")
    # ListWarmPools is idempotent, so Connect allows GET, with the message in the query
    assert "encoding" in error(client.get(f"{PREBUILD}/ListWarmPools", headers=auth), 415, "invalid_argument")
    # ...and a well-formed one still works, as does the usual POST
    ok = client.get(f"{PREBUILD}/ListWarmPools", params={"encoding": "json", "message": "{}"}, headers=auth)
    assert ok.status_code == 200 and "pagination" in ok.json(), ok.text
    assert client.post(f"{PREBUILD}/ListWarmPools", headers=auth, json={}).status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_everything_from_this_server(client, page):
    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html.text)
    assert urls, html.text
    assert not [u for u in urls if re.match(r"(https?:)?//", u)], urls  # no CDN, no fonts from elsewhere
    assert any(u.endswith(".js") for u in urls)
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 0, url
    assert client.get("/openapi.json").json()["openapi"].startswith("3.")
