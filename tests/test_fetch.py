"""`python -m study fetch` against a real HTTP server on 127.0.0.1 serving real files.

The server (Python's http.server, in a thread) serves a mirror of the authors' repository at the pinned
commit holding one real checkpoint (RN56_ORG), and CIFAR-10 archives made from the real binary batches.
Cases: a good download (and a second, idempotent run that downloads nothing), a corrupted file, a
truncated transfer (the server announces the full length and closes early), and a server that is down.
Every failure is one line on stderr, exit status 2, and leaves no file behind.
"""
from __future__ import annotations

import functools
import http.server
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from conftest import free_port, run_cli

CKPT = "RN56_ORG"
PIN_PATH = "Pretrained_Models/RN56_ORG/ckpt.t7"


class Handler(http.server.SimpleHTTPRequestHandler):
    cut: set[str] = set()      # paths whose body stops halfway (Content-Length says the full size)
    hits: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self.hits.append(self.path)
        if self.path.lstrip("/") in self.cut:
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    Handler.cut, Handler.hits = set(), []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _one_line_exit_2(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _no_partials(folder: Path):
    assert not folder.exists() or not [p for p in folder.rglob("*") if p.is_file()], list(folder.rglob("*"))


def _mirror_checkpoint(www: Path, authors_dir: Path, corrupt: bool = False) -> Path:
    dest = www / PIN_PATH
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = bytearray((authors_dir / f"{CKPT}.t7").read_bytes())
    if corrupt:
        data[len(data) // 2] ^= 0xFF
    dest.write_bytes(bytes(data))
    return dest


def _fetch_ckpt(url: str, out: Path):
    return run_cli("fetch", "authors", "--only", CKPT, "--authors-url", url, "--authors-dir", out, "--timeout", "20")


def test_a_good_checkpoint_download_is_verified_and_idempotent(server, authors_dir, tmp_path):
    from study.fetch import digests, pins

    www, url = server
    _mirror_checkpoint(www, authors_dir)
    out = tmp_path / "authors"
    done = _fetch_ckpt(url, out)
    assert done.returncode == 0, done.stderr
    assert f"{out / (CKPT + '.t7')}" in done.stdout and "verified" in done.stdout
    pin = next(p for p in pins() if p.name == f"{CKPT}.t7")
    assert digests(out / f"{CKPT}.t7") == (pin.bytes, pin.git_blob_sha1, pin.sha256)
    assert sorted(p.name for p in out.iterdir()) == [f"{CKPT}.t7"]  # nothing else left behind
    hits = len(Handler.hits)
    again = _fetch_ckpt(url, out)
    assert again.returncode == 0 and "already" not in again.stderr and "verified" in again.stdout
    assert len(Handler.hits) == hits  # idempotent: nothing downloaded the second time


def test_a_corrupted_checkpoint_is_refused_and_not_saved(server, authors_dir, tmp_path):
    www, url = server
    _mirror_checkpoint(www, authors_dir, corrupt=True)
    out = tmp_path / "authors"
    line = _one_line_exit_2(_fetch_ckpt(url, out))
    assert "does not match its pin" in line and "913bcfa4fa68" in line  # the pinned git blob id
    _no_partials(out)


def test_a_truncated_transfer_is_refused_and_not_saved(server, authors_dir, tmp_path):
    www, url = server
    _mirror_checkpoint(www, authors_dir)
    Handler.cut = {PIN_PATH}
    out = tmp_path / "authors"
    line = _one_line_exit_2(_fetch_ckpt(url, out))
    assert "truncated" in line
    _no_partials(out)


def test_a_server_that_is_down_is_one_line(tmp_path):
    out = tmp_path / "authors"
    line = _one_line_exit_2(_fetch_ckpt(f"http://127.0.0.1:{free_port()}", out))
    assert "cannot download" in line and "offline" in line
    _no_partials(out)
    cifar = run_cli("fetch", "cifar10", "--data-root", tmp_path / "data", "--cifar-url",
                    f"http://127.0.0.1:{free_port()}/cifar-10-binary.tar", "--timeout", "20")
    assert "cannot download" in _one_line_exit_2(cifar)
    _no_partials(tmp_path / "data")


def _cifar_archive(www: Path, data_root: Path, name: str, files: list[str], corrupt: str | None = None) -> str:
    src = data_root / "cifar-10-batches-bin"
    stage = www / "stage" / "cifar-10-batches-bin"
    stage.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(src / f, stage / f)
        if f == corrupt:
            data = bytearray((stage / f).read_bytes())
            data[1000] ^= 0xFF
            (stage / f).write_bytes(bytes(data))
    with tarfile.open(www / name, "w") as tar:
        tar.add(stage, arcname="cifar-10-batches-bin")
    shutil.rmtree(www / "stage")
    return name


def test_cifar_from_a_mirror_is_checked_file_by_file(server, data_root, tmp_path):
    from study.data.cifar import BIN_FILES

    www, url = server
    # one batch, corrupted: refused with the file and its official md5, nothing saved
    bad = _cifar_archive(www, data_root, "one-corrupt.tar", ["test_batch.bin"], corrupt="test_batch.bin")
    line = _one_line_exit_2(run_cli("fetch", "cifar10", "--data-root", tmp_path / "data", "--cifar-url",
                                    f"{url}/{bad}", "--timeout", "20"))
    assert "test_batch.bin" in line and BIN_FILES["test_batch.bin"] in line
    _no_partials(tmp_path / "data")
    # the same batch cut short in transfer: a truncated archive, nothing saved
    short = _cifar_archive(www, data_root, "one-batch.tar", ["test_batch.bin"])
    Handler.cut = {short}
    line = _one_line_exit_2(run_cli("fetch", "cifar10", "--data-root", tmp_path / "data", "--cifar-url",
                                    f"{url}/{short}", "--timeout", "20"))
    assert "truncated or corrupt" in line or "md5" in line
    _no_partials(tmp_path / "data")


@pytest.mark.slow  # a 184 MB archive of the real batches: minutes on a busy 2-core machine
def test_cifar_from_a_mirror_downloads_verifies_and_is_idempotent(server, data_root, tmp_path):
    from study.data.cifar import BIN_FILES, locate

    www, url = server
    # the whole binary version: fetched, verified, and found again without a download
    good = _cifar_archive(www, data_root, "cifar-10-binary.tar", list(BIN_FILES))
    done = run_cli("fetch", "cifar10", "--data-root", tmp_path / "data", "--cifar-url", f"{url}/{good}",
                   "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert "matches its official md5" in done.stdout and str(tmp_path / "data") in done.stdout
    assert locate(tmp_path / "data", check_md5=False)[0] == "bin"  # fetch checked every md5
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cifar-10-batches-bin"]
    hits = len(Handler.hits)
    again = run_cli("fetch", "cifar10", "--data-root", tmp_path / "data", "--cifar-url", f"{url}/{good}")
    assert again.returncode == 0 and "already there" in again.stdout and len(Handler.hits) == hits


def test_the_pins_are_the_thirteen_released_checkpoints():
    from study.fetch import AUTHORS_COMMIT, PINS, pins

    ps = pins()
    assert len(ps) == 13 and len({p.name for p in ps}) == 13
    assert all(len(p.git_blob_sha1) == 40 for p in ps)
    assert AUTHORS_COMMIT in PINS.read_text()
    shared = Path(__file__).resolve().parents[2] / "shared" / "pretrained" / "authors" / "RELEASED.tsv"
    if shared.exists():  # the project's copy is the shared pins, unchanged
        assert PINS.read_text() == shared.read_text()
