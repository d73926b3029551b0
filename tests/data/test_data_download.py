"""The downloader against a local HTTP server on 127.0.0.1 (loopback only)."""

import hashlib
import http.server
import re
import threading

import numpy as np
import pytest
from data_fixtures import IDX_NAMES, make_idx_dir, md5_of

from mongotune.data import DataSpec, prepare
from mongotune.data._download import download
from mongotune.data._sources import REMOTE, RemoteFile
from mongotune.errors import DataError


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` unless told not to,
    and can cut the first transfer short to simulate a dropped connection."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        srv = self.server
        name = self.path.lstrip("/")
        range_header = self.headers.get("Range")
        srv.requests.append((name, range_header))
        if name not in srv.files:
            self.send_error(404)
            return
        body = srv.files[name]
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and srv.ranges:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if srv.drop_after is not None:
            cut, srv.drop_after = srv.drop_after, None  # only the first transfer breaks
            srv.sent += cut  # counted before writing: the client may finish first
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        srv.sent += len(payload)
        self.wfile.write(payload)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.ranges, srv.drop_after, srv.sent = {}, [], True, None, 0
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_fresh_download_reports_progress(server, tmp_path):
    server.files["blob.bin"] = PAYLOAD
    calls = []
    dest = tmp_path / "dl" / "blob.bin"
    got = download([server.url + "blob.bin"], dest, dataset="t", expected={"md5": MD5},
                   progress=lambda *a: calls.append(a))
    assert dest.read_bytes() == PAYLOAD
    assert got == {"md5": MD5, "sha256": SHA}
    assert not (tmp_path / "dl" / "blob.bin.part").exists()
    dl = [c for c in calls if c[0] == "download blob.bin"]
    assert dl[0][1] == 0 and dl[-1] == ("download blob.bin", len(PAYLOAD), len(PAYLOAD))
    assert all(a[1] <= b[1] for a, b in zip(dl, dl[1:]))
    assert server.requests == [("blob.bin", None)]


def test_resume_from_part_file_asks_only_for_the_rest(server, tmp_path):
    server.files["blob.bin"] = PAYLOAD
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:120_000])
    download([server.url + "blob.bin"], dest, dataset="t", expected={"sha256": SHA})
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("blob.bin", "bytes=120000-")]
    assert server.sent == len(PAYLOAD) - 120_000


def test_dropped_connection_is_resumed(server, tmp_path):
    server.files["blob.bin"] = PAYLOAD
    server.drop_after = 100_000
    dest = tmp_path / "blob.bin"
    download([server.url + "blob.bin"], dest, dataset="t", expected={"md5": MD5})
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, "bytes=100000-"]
    assert server.sent == len(PAYLOAD)


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    server.files["blob.bin"] = PAYLOAD
    server.ranges = False
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 5000)  # would corrupt if appended to
    dest = tmp_path / "blob.bin"
    download([server.url + "blob.bin"], dest, dataset="t", expected={"md5": MD5})
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_gets_416_and_is_kept(server, tmp_path):
    server.files["blob.bin"] = PAYLOAD
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD)
    dest = tmp_path / "blob.bin"
    download([server.url + "blob.bin"], dest, dataset="t", expected={"md5": MD5})
    assert dest.read_bytes() == PAYLOAD
    assert server.sent == 0


def test_checksum_mismatch_removes_the_download(server, tmp_path):
    server.files["blob.bin"] = PAYLOAD
    dest = tmp_path / "blob.bin"
    with pytest.raises(DataError) as info:
        download([server.url + "blob.bin"], dest, dataset="fashion_mnist",
                 expected={"md5": "0" * 32})
    msg = str(info.value)
    assert msg.startswith(f"fashion_mnist: checksum mismatch for blob.bin (expected md5 {'0' * 32}, "
                          f"got {MD5})")
    assert not dest.exists() and not (tmp_path / "blob.bin.part").exists()


def test_mirrors_are_tried_in_order(server, tmp_path):
    server.files["b/blob.bin"] = PAYLOAD
    dest = tmp_path / "blob.bin"
    download([server.url + "a/blob.bin", server.url + "b/blob.bin"], dest, dataset="t",
             expected={"md5": MD5})
    assert dest.read_bytes() == PAYLOAD
    assert [n for n, _ in server.requests] == ["a/blob.bin", "b/blob.bin"]


def test_unreachable_everywhere(server, tmp_path):
    with pytest.raises(DataError) as info:
        download([server.url + "missing.bin"], tmp_path / "missing.bin", dataset="mnist",
                 expected={"md5": MD5})
    assert str(info.value) == (
        f"mnist: could not download missing.bin (1 URL(s) tried, last error: "
        f"{server.url}missing.bin: HTTP 404 Not Found); download it by hand and pass --source DIR")


def _serve_idx(server, tmp_path, monkeypatch, known: bool):
    src = tmp_path / "served"
    arrays = make_idx_dir(src)
    files = []
    for name in IDX_NAMES:
        server.files[f"mnist/{name}"] = (src / name).read_bytes()
        files.append(RemoteFile(name, (server.url + "nowhere/" + name, server.url + "mnist/" + name),
                                md5=md5_of(src / name) if known else None))
    monkeypatch.setitem(REMOTE, "mnist", tuple(files))
    return arrays


def test_prepare_downloads_once_into_the_cache(server, tmp_path, cache_dir, monkeypatch):
    arrays = _serve_idx(server, tmp_path, monkeypatch, known=True)
    calls = []
    ds = prepare(DataSpec("mnist", size=14), cache_dir, progress=lambda *a: calls.append(a))
    assert len(ds.y_test) == 100
    np.testing.assert_array_equal(ds.y_test, arrays.y_test)
    for name in IDX_NAMES:
        assert (cache_dir / "downloads" / "mnist" / name).is_file()
        assert f"download {name}" in {c[0] for c in calls}
    served = len(server.requests)
    prepare(DataSpec("mnist", size=10), cache_dir)  # another size: no new download
    assert len(server.requests) == served


def test_unknown_checksum_is_recorded_then_enforced(server, tmp_path, cache_dir, monkeypatch):
    _serve_idx(server, tmp_path, monkeypatch, known=False)
    prepare(DataSpec("mnist"), cache_dir)
    pins = (cache_dir / "downloads" / "pins.json").read_text()
    sha = hashlib.sha256(server.files["mnist/" + IDX_NAMES[0]]).hexdigest()
    assert f'"mnist/{IDX_NAMES[0]}": "{sha}"' in pins
    # The downloaded file is swapped for another one: later reads refuse it.
    other = tmp_path / "other"
    make_idx_dir(other, seed=3)
    (cache_dir / "downloads" / "mnist" / IDX_NAMES[0]).write_bytes((other / IDX_NAMES[0]).read_bytes())
    with pytest.raises(DataError, match=f"mnist: checksum mismatch for {IDX_NAMES[0]} "
                                        f"\\(expected sha256 {sha} recorded on first use"):
        prepare(DataSpec("mnist"), cache_dir, force=True)


def test_corrupt_download_in_cache_is_reported(server, tmp_path, cache_dir, monkeypatch):
    _serve_idx(server, tmp_path, monkeypatch, known=True)
    prepare(DataSpec("mnist"), cache_dir)
    target = cache_dir / "downloads" / "mnist" / IDX_NAMES[1]
    target.write_bytes(b"garbage")
    with pytest.raises(DataError) as info:
        prepare(DataSpec("mnist", size=9), cache_dir)
    assert str(info.value).startswith(f"mnist: checksum mismatch for {IDX_NAMES[1]} (expected md5 ")
    assert str(info.value).endswith(f"; delete {target} or pass --source")
