"""`python -m study fetch`: CIFAR-10 and the authors' released checkpoints, downloaded and verified.

- CIFAR-10 through torchvision (`download_url`, `extract_archive`) from torchvision's own URL, the
  archive checked against torchvision's official md5, then every extracted batch against the official
  per-file md5s (`study.data.cifar`).  A mirror (`--cifar-url`, an archive holding
  `cifar-10-batches-py/` or `cifar-10-batches-bin/`) is checked file by file the same way.
- The authors' thirteen checkpoints from their public repository at the pinned commit
  (`reference/authors_checkpoints.tsv`, a copy of the pins in `shared/pretrained/authors/RELEASED.tsv`):
  each file is checked against git's blob id (always known), and its size and SHA-256 where known.
  Saved as `<folder name>.t7` (`RN56_ORG.t7`, ...), the names the tests and the README use.

Idempotent: what is there and verifies is not fetched again.  Every download goes to a temporary file
(or folder) beside its destination and is moved into place only once verified, so an interrupted,
truncated or corrupt download leaves nothing behind.  Offline, or on any mismatch: one line on stderr
and exit status 2.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from study.env import PROJECT

PINS = PROJECT / "reference" / "authors_checkpoints.tsv"
AUTHORS_REPO = "hamedomidvar/associativeconv"
AUTHORS_COMMIT = "9930915abd3625871354df676865fc44eb92abf3"
AUTHORS_URL = f"https://raw.githubusercontent.com/{AUTHORS_REPO}/{AUTHORS_COMMIT}"
TIMEOUT = 60.0


class FetchError(Exception):
    """Offline, unreachable, truncated or not matching its pin: one line, exit status 2."""


@dataclass(frozen=True)
class Pin:
    path: str           # in the authors' repository
    git_blob_sha1: str
    bytes: int | None
    sha256: str | None

    @property
    def name(self) -> str:  # the local file: the checkpoint's folder name
        return Path(self.path).parent.name + ".t7"


def pins(path: Path = PINS) -> list[Pin]:
    rows = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    out = []
    for r in csv.DictReader(rows, delimiter="\t"):
        out.append(Pin(r["path"], r["git_blob_sha1"], int(r["bytes"]) if r.get("bytes") else None,
                       r.get("sha256") or None))
    return out


def default_data_root() -> Path:
    return Path(os.environ.get("STUDY_DATA_ROOT") or PROJECT / "data")


def default_authors_dir() -> Path:
    return Path(os.environ.get("STUDY_AUTHORS_DIR") or PROJECT / "pretrained" / "authors")


# -- checks ---------------------------------------------------------------------------------------
def digests(path: Path) -> tuple[int, str, str]:
    """(size, git blob sha1, sha256) of a file."""
    size = path.stat().st_size
    blob, sha = hashlib.sha1(f"blob {size}\0".encode()), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            blob.update(chunk)
            sha.update(chunk)
    return size, blob.hexdigest(), sha.hexdigest()


def mismatch(pin: Pin, path: Path) -> str | None:
    """Why `path` is not the pinned file, or None when it is."""
    size, blob, sha = digests(path)
    if pin.bytes is not None and size != pin.bytes:
        return f"{size:,} bytes, the pin says {pin.bytes:,}"
    if blob != pin.git_blob_sha1:
        return f"git blob id {blob}, the pin says {pin.git_blob_sha1}"
    if pin.sha256 is not None and sha != pin.sha256:
        return f"SHA-256 {sha}, the pin says {pin.sha256}"
    return None


def _cifar_problem(root: Path) -> str | None:
    """Why `root` does not hold a complete, official CIFAR-10 (a corrupt file named before a missing one)."""
    from study.data.cifar import BIN_FILES, md5, py_files

    for folder, files in (("cifar-10-batches-bin", BIN_FILES), ("cifar-10-batches-py", py_files())):
        base = root / folder
        if not base.is_dir():
            continue
        missing, corrupt = [], []
        for name, expected in files.items():
            if not (base / name).is_file():
                missing.append(f"{base / name}: missing (expected md5 {expected})")
            elif (got := md5(base / name)) != expected:
                corrupt.append(f"{base / name}: md5 {got} differs from the official {expected}")
        return (corrupt + missing)[0] if corrupt or missing else None
    return f"{root}: holds neither cifar-10-batches-bin/ nor cifar-10-batches-py/"


# -- downloads ------------------------------------------------------------------------------------
def _download(url: str, dest: Path, timeout: float) -> None:
    """`url` -> `dest` (a temporary name), or FetchError; short bodies are caught by Content-Length."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "csg-study-fetch"}),
                                    timeout=timeout) as r, open(dest, "wb") as f:
            expected = r.headers.get("Content-Length")
            got = 0
            while chunk := r.read(1 << 20):
                f.write(chunk)
                got += len(chunk)
    except urllib.error.HTTPError as e:
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise FetchError(f"cannot download {url}: {reason} (offline, or the server is down?)") from None
    if expected is not None and got != int(expected):
        raise FetchError(f"{url}: truncated download, {got:,} of {int(expected):,} bytes")


def fetch_checkpoint(pin: Pin, folder: Path, base_url: str = AUTHORS_URL, timeout: float = TIMEOUT) -> str:
    dest = folder / pin.name
    if dest.is_file() and mismatch(pin, dest) is None:
        return f"{dest} (verified: git blob {pin.git_blob_sha1[:12]})"
    replaced = dest.is_file()
    folder.mkdir(parents=True, exist_ok=True)
    url = f"{base_url.rstrip('/')}/{urllib.parse.quote(pin.path)}"
    fd, tmp = tempfile.mkstemp(prefix=f".{pin.name}.", suffix=".part", dir=folder)
    os.close(fd)
    tmp = Path(tmp)
    try:
        _download(url, tmp, timeout)
        why = mismatch(pin, tmp)
        if why is not None:
            raise FetchError(f"{url}: does not match its pin ({why}); nothing saved")
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return f"{dest} (downloaded{', replacing a copy that did not match' if replaced else ''}; " \
           f"git blob {pin.git_blob_sha1[:12]} verified)"


def fetch_cifar(root: Path, url: str | None = None, timeout: float = TIMEOUT) -> str:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_url, extract_archive

    if _cifar_problem(root) is None:
        return f"{root} (already there; every file matches its official md5)"
    official = url is None
    url = url or CIFAR10.url
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-cifar-", dir=root))
    try:
        filename = Path(urllib.parse.urlparse(url).path).name or "cifar-10.tar.gz"
        try:
            import socket

            old = socket.getdefaulttimeout()
            socket.setdefaulttimeout(timeout)
            try:  # torchvision prints its progress: keep stderr for the one line of a failure
                with open(os.devnull, "w") as null, contextlib.redirect_stderr(null), contextlib.redirect_stdout(null):
                    download_url(url, str(work), filename, md5=CIFAR10.tgz_md5 if official else None)
            finally:
                socket.setdefaulttimeout(old)
        except RuntimeError as e:  # torchvision: "File not found or corrupted."
            raise FetchError(f"{url}: the download does not match the official md5 {CIFAR10.tgz_md5} ({e})") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise FetchError(f"cannot download {url}: {reason} (offline, or the server is down?)") from None
        try:
            extract_archive(str(work / filename), str(work / "x"))
        except Exception as e:  # noqa: BLE001  (tarfile/zipfile/gzip each raise their own)
            raise FetchError(f"{url}: the archive is truncated or corrupt ({type(e).__name__}: {e})".splitlines()[0]) \
                from None
        why = _cifar_problem(work / "x")
        if why is not None:
            raise FetchError(why.replace(str(work / "x"), url) + "; nothing saved")
        for folder in ("cifar-10-batches-bin", "cifar-10-batches-py"):
            if (work / "x" / folder).is_dir():
                target = root / folder
                if target.exists():  # an incomplete or corrupt copy: set aside, then replaced
                    target.rename(work / "old")
                (work / "x" / folder).rename(target)
                return f"{target} (downloaded from {url}; every file matches its official md5)"
        raise FetchError(f"{url}: no CIFAR-10 folder in the archive")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(what: str, data_root: Path, authors_dir: Path, cifar_url: str | None, authors_url: str,
        only: list[str], timeout: float) -> list[str]:
    lines = []
    if what in ("all", "cifar10"):
        lines.append("CIFAR-10: " + fetch_cifar(data_root, cifar_url, timeout))
    if what in ("all", "authors"):
        chosen = [p for p in pins() if not only or p.name.removesuffix(".t7") in only or p.name in only]
        unknown = set(only) - {p.name for p in chosen} - {p.name.removesuffix(".t7") for p in chosen}
        if unknown:
            raise FetchError(f"no pinned checkpoint named {', '.join(sorted(unknown))}; see {PINS}")
        for p in chosen:
            lines.append(f"checkpoint {p.name}: " + fetch_checkpoint(p, authors_dir, authors_url, timeout))
    return lines
