"""What clients and orchestrators see while Synapse is down, and after it returns."""

import httpx

import stack


def ready_status() -> int:
    return httpx.get(f"{stack.HS_URL}/_hungryserv/ready", timeout=10).status_code


def test_synapse_outage_is_reported_and_recovered(synapse_stopped):
    with httpx.Client(base_url=stack.HS_URL, timeout=30) as client:
        for method, path in [
            ("GET", "/_matrix/client/v3/login"),
            ("POST", "/_matrix/client/v3/login"),
        ]:
            resp = client.request(method, path, json={} if method == "POST" else None)
            assert resp.status_code == 502, (method, path, resp.text)
            assert resp.headers["content-type"].startswith("application/json")
            body = resp.json()
            assert body["errcode"] == "M_UNKNOWN"
            assert isinstance(body["error"], str) and body["error"]

        health = client.get("/_hungryserv/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}

        ready = client.get("/_hungryserv/ready")
        assert ready.status_code == 503
        assert "synapse" in ready.text.lower(), ready.text

        stack.stack_lib("synapse_start")
        stack.wait_until(lambda: ready_status() == 200, 30, "/_hungryserv/ready to recover")
        login = client.get("/_matrix/client/v3/login")
        assert login.status_code == 200
        assert any(f["type"] == "m.login.password" for f in login.json()["flows"])
