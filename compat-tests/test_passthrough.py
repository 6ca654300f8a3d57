"""Forwarded requests: the same request sent to Synapse directly and through
hungryserv must get the same answer, and Synapse must see the request as sent."""

import secrets
import shutil
import subprocess

import pytest

import stack


@pytest.mark.parametrize(
    "method, target, headers",
    [
        # Login flows: a plain JSON 200.
        ("GET", "/_matrix/client/v3/login", {}),
        # A Matrix JSON error (401 M_MISSING_TOKEN).
        ("GET", "/_matrix/client/v3/account/whoami", {}),
        # Twisted's own HTML 404, not JSON: must arrive untouched.
        ("GET", "/this-path-does-not-exist", {}),
        # A browser's CORS preflight; web clients depend on these headers.
        (
            "OPTIONS",
            "/_matrix/client/v3/login",
            {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        ),
    ],
)
def test_forwarded_response_is_synapses(method, target, headers):
    direct = stack.raw_request(stack.SYNAPSE_URL, method, target, headers)
    proxied = stack.raw_request(stack.HS_URL, method, target, headers)
    assert proxied.status == direct.status
    assert proxied.body == direct.body
    expected = direct.end_to_end_headers()
    if direct.status == 204:
        # Synapse sends "Content-Length: 0" on a 204, which RFC 9110 8.6
        # forbids; hyper drops it, and no client can tell the difference.
        expected.remove(("content-length", "0"))
    assert proxied.end_to_end_headers() == expected


def test_synapse_html_404_is_passed_through():
    resp = stack.raw_request(stack.HS_URL, "GET", "/this-path-does-not-exist")
    assert resp.status == 404
    assert resp.header("Content-Type") == "text/html; charset=utf-8"
    assert b"No Such Resource" in resp.body


def test_escaped_path_and_query_reach_synapse_byte_exact():
    # %2F must not become a path separator, %20 must not become "+" (nor the
    # reverse), and the UTF-8 escapes must not be decoded or re-cased.
    marker = secrets.token_hex(8)
    alias = f"%23odd%2Falias%20with+plus%C3%A9{marker}%3A{stack.SERVER_NAME}"
    target = f"/_matrix/client/v3/directory/room/{alias}?q=a%2Fb%20c+d%c3%a9&marker={marker}"

    direct = stack.raw_request(stack.SYNAPSE_URL, "GET", target)
    proxied = stack.raw_request(stack.HS_URL, "GET", target)
    assert (proxied.status, proxied.body) == (direct.status, direct.body)
    # Synapse decoded the alias as one path segment (else it would not be named here).
    assert proxied.status == 404
    assert f"#odd/alias with+plusé{marker}:{stack.SERVER_NAME}" in proxied.body.decode()

    # Synapse's access log records the raw request line; both requests carry
    # the marker, and both must have been logged with the target unchanged.
    def logged():
        lines = stack.SYNAPSE_LOG.read_text().splitlines()
        return [line for line in lines if marker in line and "Processed request" in line]

    stack.wait_until(lambda: len(logged()) >= 2, 10, "Synapse to log both requests")
    for line in logged():
        assert f'"GET {target} HTTP/' in line, line


def test_h2c_prior_knowledge_answers_like_http1():
    curl = shutil.which("curl")
    assert curl, "curl is needed to speak h2c"
    url = f"{stack.HS_URL}/_matrix/client/versions"

    def fetch(*flags):
        out = subprocess.run(
            [curl, "-sS", "--max-time", "10", *flags, "-w", "\n%{http_version} %{http_code}", url],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        body, _, status_line = out.rpartition("\n")
        return body, status_line

    h2_body, h2_status = fetch("--http2-prior-knowledge")
    h1_body, h1_status = fetch("--http1.1")
    assert h2_status == "2 200"
    assert h1_status == "1.1 200"
    assert h2_body == h1_body
    assert "versions" in h2_body
