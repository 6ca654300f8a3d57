"""Large media goes through hungryserv intact and without being buffered."""

import hashlib
import os
import threading
import time

import httpx

import stack

# Just under the stack's Synapse upload limit (50M).
SIZE = 48 * 1024 * 1024
# A proxy that buffered the body would hold all of SIZE at once; streaming costs a
# few socket buffers plus what the allocator takes in steps of 2-4 MiB and keeps
# for a while: one CI run of a 20 MiB upload grew hungryserv by 12 MiB, and six
# local 48 MiB runs, each in a fresh process, by 4-8 MiB. A buffering proxy grew
# by 106 MiB (checked by collecting the body in the forwarder). The bound sits
# halfway, in ratio, between the two.
MAX_RSS_GROWTH = 24 * 1024 * 1024
CHUNK = 256 * 1024


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssPeak:
    """Samples a process's resident memory every few milliseconds while the
    `with` block runs, and keeps the peak."""

    def __init__(self, pid: int):
        self.pid = pid
        self.baseline = rss_bytes(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def upload(client: httpx.Client, user, data: bytes) -> str:
    def chunks():
        for i in range(0, len(data), CHUNK):
            yield data[i : i + CHUNK]

    # Synapse insists on a Content-Length; with it set, httpx streams the
    # generator instead of switching to chunked encoding.
    resp = client.post(
        "/_matrix/media/v3/upload",
        params={"filename": "blob.bin"},
        headers={**user.auth, "Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
        content=chunks(),
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["content_uri"]


def download(client: httpx.Client, user, mxc: str) -> tuple[str, int, str | None]:
    """sha256 and length of the downloaded body, and its Content-Length header."""
    server_name, media_id = mxc.removeprefix("mxc://").split("/")
    digest, length = hashlib.sha256(), 0
    with client.stream(
        "GET", f"/_matrix/client/v1/media/download/{server_name}/{media_id}", headers=user.auth
    ) as resp:
        assert resp.status_code == 200
        for chunk in resp.iter_bytes():
            digest.update(chunk)
            length += len(chunk)
    return digest.hexdigest(), length, resp.headers.get("content-length")


def test_48mb_upload_and_download_stream_through(user):
    pid = stack.hungryserv_pid()
    data = os.urandom(SIZE)
    with httpx.Client(base_url=stack.HS_URL, timeout=120) as client:
        # Warm up connection pools and worker threads so that their one-off
        # allocations are not counted against the transfer.
        download(client, user, upload(client, user, os.urandom(CHUNK)))

        with RssPeak(pid) as up:
            mxc = upload(client, user, data)
        with RssPeak(pid) as down:
            sha, length, content_length = download(client, user, mxc)

    mib = 1024 * 1024
    print(
        f"\nhungryserv RSS during {SIZE // mib} MiB transfers: "
        f"upload {up.baseline / mib:.1f} -> {up.peak / mib:.1f} MiB (+{up.growth / mib:.2f}), "
        f"download {down.baseline / mib:.1f} -> {down.peak / mib:.1f} MiB (+{down.growth / mib:.2f})"
    )
    assert length == SIZE
    assert content_length == str(SIZE)
    assert sha == hashlib.sha256(data).hexdigest()
    assert up.growth < MAX_RSS_GROWTH, f"upload grew RSS by {up.growth} bytes: body buffered?"
    assert down.growth < MAX_RSS_GROWTH, f"download grew RSS by {down.growth} bytes: body buffered?"
