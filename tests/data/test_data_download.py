"""`effdetseg data download` against a tiny archive served on 127.0.0.1 (Range-capable server)."""
from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading

import pytest

from effdetseg.cli import main
from effdetseg.data import download
from effdetseg.data.download import Archive, download_dataset
from effdetseg.errors import EffdetsegError


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (name -> bytes), honouring ``Range: bytes=N-`` with 206 responses."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.server.files.get(self.path.lstrip("/"))
        self.server.requests.append((self.path, self.headers.get("Range")))
        if body is None:
            self.send_error(404)
            return
        start = 0
        header = self.headers.get("Range")
        if header and header.startswith("bytes=") and self.server.ranges:
            start = int(header[len("bytes=") :].split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    httpd.files, httpd.requests, httpd.ranges = {}, [], True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _tiny_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in {"VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": b"2007_000033\n", "VOCdevkit/VOC2012/README": b"x" * 5000}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _table(server, body: bytes, md5: str | None = None) -> dict[str, tuple[Archive, ...]]:
    server.files["voc.tgz"] = body
    url = f"http://127.0.0.1:{server.server_address[1]}/voc.tgz"
    return {"voc": (Archive(url, md5 or hashlib.md5(body).hexdigest(), "voc.tgz"),)}


def test_download_verifies_extracts_and_skips_when_done(server, tmp_path):
    body = _tiny_tar()
    table = _table(server, body)
    download_dataset("voc", tmp_path, archives=table, progress=False)
    assert (tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").read_text() == "2007_000033\n"
    assert not (tmp_path / "voc.tgz").exists()  # archive removed after extraction by default
    download_dataset("voc", tmp_path, archives=table, progress=False)
    assert len(server.requests) == 1  # already extracted: nothing fetched again


def test_download_resumes_a_partial_file_with_range(server, tmp_path):
    body = _tiny_tar()
    table = _table(server, body)
    (tmp_path / "voc.tgz.part").write_bytes(body[:100])
    paths = download_dataset("voc", tmp_path, archives=table, extract_archives=False, progress=False)
    assert paths == [tmp_path / "voc.tgz"] and (tmp_path / "voc.tgz").read_bytes() == body
    assert server.requests == [("/voc.tgz", "bytes=100-")]


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    server.ranges = False
    body = _tiny_tar()
    table = _table(server, body)
    (tmp_path / "voc.tgz.part").write_bytes(b"garbage!" * 10)
    download_dataset("voc", tmp_path, archives=table, extract_archives=False, progress=False)
    assert (tmp_path / "voc.tgz").read_bytes() == body


def test_wrong_checksum_is_a_clear_error_and_the_file_is_dropped(server, tmp_path):
    table = _table(server, _tiny_tar(), md5="0" * 32)
    with pytest.raises(EffdetsegError, match=r"voc\.tgz: checksum mismatch \(MD5 [0-9a-f]{32}, expected 0{32}\)"):
        download_dataset("voc", tmp_path, archives=table, progress=False)
    assert not (tmp_path / "voc.tgz").exists() and not (tmp_path / "voc.tgz.part").exists()


def test_download_command_line(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download, "ARCHIVES", _table(server, _tiny_tar(), md5="f" * 32))
    assert main(["data", "download", "voc", "--root", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("effdetseg data: error: http://127.0.0.1:") and "checksum mismatch" in err[0]
    assert main(["data", "download", "imagenet", "--root", str(tmp_path)]) == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err
    monkeypatch.setattr(download, "ARCHIVES", {"voc": (Archive(f"http://127.0.0.1:{server.server_address[1]}/missing.tgz", "0" * 32, "m.tgz"),)})
    assert main(["data", "download", "voc", "--root", str(tmp_path), "--no-progress"]) == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_official_table_has_voc_sbd_coco():
    assert set(download.ARCHIVES) == {"voc", "sbd", "coco"}
    for archives in download.ARCHIVES.values():
        for a in archives:
            assert a.url.startswith("http") and len(a.md5) == 32 and a.url.endswith(a.filename)
