"""The run directory (`--out` of tinyvit.finetune): nothing lost, nothing silently wrong.

A run writes a handful of files into one directory and may be stopped, killed, resumed, forced
over, or read by tinyvit.evaluate and tinyvit.predict while another run starts. This module is
what makes those safe. Its guarantees, in the order a run meets them:

1. One run at a time. `.tinyvit-run.lock` holds the PID and host of the run using the
   directory, and the run holds an exclusive `fcntl.flock` on it while it lives. A second run or
   `--resume` is refused at once, naming that process. The kernel drops the lock when its holder
   dies (even by `kill -9`), so a lock file left behind is taken over, with a log line.
   flock is advisory and per open file: two runs on one machine, or on an NFS that forwards
   locks, exclude each other; other tools are not stopped from writing.
2. Only what a run wrote is ever removed. The manifest, `tinyvit-run.json`, is the run's first
   file; every file the run writes is recorded in it *before* it appears under its name. `--force`
   removes exactly the files the manifest lists and the run's own scratch space
   (`.tinyvit-feature-cache/`, `.tinyvit-tmp-*`: names no other tool uses). A directory that
   holds anything else is refused, naming what is there; a non-empty directory without a
   manifest is not a run at all and is refused even with `--force` (`--out ~ --force` must never
   empty `~/.cache`). Nothing outside the directory is reached through a name the run reads back:
   the manifest may list only plain names (no `/`, no `..`, not absolute, not the run's own scratch
   names), each with a 64-hex SHA-256 and a byte count, or it is refused whole; `--force` removes
   only regular files directly in the directory, and a recorded name that is now a link, a folder
   or a device is refused by name, never followed or entered. The lock is opened with `O_NOFOLLOW`
   and must be a regular file with no other name (a hard link would share its bytes).
3. What is read is what was written. The manifest holds each file's size and SHA-256, and every
   file of a run is read through `verify` first: `--resume` (tinyvit.finetune's and
   tinyvit.pretrain's), `tinyvit.load_pretrained`, `tinyvit.export`, `tinyvit.evaluate`,
   `tinyvit.predict`, `tinyvit.compare`, `--weights` and `--teacher` of tinyvit.finetune, and the
   study's reads of its runs. A file named for its run (`export RUN/checkpoint.pt`) is verified
   itself (`run_of`), even where the run's other files are what is then read; a file a reader
   decides by is verified too (`holds`: a pretraining run's pretrain.json). A mismatch is refused in
   one line naming the file: a flipped bit in checkpoint.pt or model.safetensors changes a weight,
   not into a NaN, so no later check would catch it. A directory with no manifest
   (`tinyvit.save_pretrained`, a Hugging Face download) is read unchecked.
4. Every write is atomic and survives `kill -9` at any instant. A file is written in full into
   a private `.tinyvit-tmp-*` folder beside its target, fsynced, hashed, recorded in the manifest,
   then renamed over the target in one step. A write refused for space (a full disk, a quota) is
   one `WriteError` saying that the previous version of the file is kept. Between the record and the rename the target may
   still hold the previous version, so the entry keeps that version's hash (`replacing`) until
   the rename is done: either version verifies, and the next run settles which one is there.
5. The data is the data the run began with. The manifest records a fingerprint of each split
   when the run starts, and `--resume` on different data (another `--data-dir` with the same
   class names) is refused unless `--allow-data-change` says it is on purpose.

How a dataset is fingerprinted (`fingerprint`). A dataset may say it itself: a method
`fingerprint() -> str` that changes whenever its samples or labels do (a content hash, an
archive's checksum, a Hugging Face dataset's `_fingerprint`, generator parameters). Without one,
the first of these that applies is used:

    a subset (`.base` or `.dataset`, and `.indices`)  the parent's fingerprint and the indices
    a Hugging Face `datasets.Dataset`                 its `_fingerprint`
    files (`.samples` or `.imgs`: (path, label) pairs) (path relative to `.root`, size, label) of each
    arrays (`.data`, `.targets`: CIFAR, MNIST)         a hash of the pixel and label arrays
    plain parameters only (ints, floats, strings)     the parameters (the synthetic dataset)

and otherwise None: the run says it cannot tell whether the data changed, and goes on.

The readers of a run's small files, each verified, are here too, so that every layer above can use
them: `read_classes` (classes.json), `read_metrics` (metrics.jsonl) and `read_summary` (summary.json); and `CHECKPOINT_FORMAT`, what
checkpoint.pt says it is (tinyvit/checkpoint.py `read_run_state` reads it).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Optional

from tinyvit.atomic import write_atomic
from tinyvit.errors import MissingFileError, TinyvitError

MANIFEST = "tinyvit-run.json"
LOCK = ".tinyvit-run.lock"
CACHE_DIR = ".tinyvit-feature-cache"  # the feature cache (tinyvit/cache.py), removed when the run ends
# checkpoint.pt, the resume state tinyvit/trainer.py writes and tinyvit/export.py can read back.
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "tinyvit.finetune", 2  # 2: resumes from a step counter (tinyvit/trainer.py)
STAGING = ".tinyvit-tmp-"  # prefix of the folders files are written in before they are renamed
FORMAT, VERSION = "tinyvit-run", 1


class RunDirError(TinyvitError):
    """A run directory that cannot be used as asked: in use, not writable, not a run, changed data."""


class WriteError(RunDirError):
    """A file the run could not write (a full disk, a quota): its previous version is kept."""


class ChecksumError(TinyvitError):
    """A file of a run whose bytes are not the ones the run wrote; the message names the file."""


def sha256_file(path) -> str:
    """The file's SHA-256, read in 1 MiB chunks (hashlib.file_digest would need Python 3.11)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _names(paths: Iterable, limit: int = 5) -> str:
    paths = sorted(paths)
    return ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _files(n: int) -> str:
    return f"{n} file{'s' if n != 1 else ''}"


# ---------------------------------------------------------------------------------------------
# The manifest: what the run wrote, and each file's SHA-256.
# ---------------------------------------------------------------------------------------------


def read_manifest(directory) -> Optional[dict]:
    """The manifest of a run directory, or None where there is none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path}: not a readable run manifest ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise RunDirError(f"{path}: not a tinyvit run manifest")
    if manifest.get("version") != VERSION:
        raise RunDirError(f"{path}: run manifest version {manifest.get('version')!r}, expected {VERSION}")
    for name, entry in manifest["files"].items():
        problem = _bad_name(name) or _bad_entry(entry)
        if problem:
            raise RunDirError(f"{path}: files entry {name!r}: {problem}; not a manifest a run wrote, so nothing was removed")
    dataset = manifest.get("dataset")
    if dataset is not None and not (isinstance(dataset, dict) and all(isinstance(v, (str, type(None))) for v in dataset.values())):
        raise RunDirError(f"{path}: dataset: expected an object of fingerprints (strings)")
    return manifest


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _bad_name(name: str) -> Optional[str]:
    """Why a name the manifest lists is not a file a run writes, or None. A run writes plain names
    straight into its directory; anything else (a path, "..", the run's own scratch names) would let
    an edited manifest point --force at a file outside the run, or at the lock."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or os.path.isabs(name):
        return "not a plain file name (a run writes only into its own directory)"
    if name == MANIFEST or is_scratch(name):
        return "a name the run keeps for itself, never a file it records"
    return None


def _bad_entry(entry) -> Optional[str]:
    if not isinstance(entry, dict):
        return f"expected an object with sha256 and bytes, found {type(entry).__name__} {entry!r:.40}"
    for key in ("sha256", "replacing"):
        value = entry.get(key)
        if (key == "sha256" or value is not None) and not (isinstance(value, str) and _SHA256.fullmatch(value)):
            return f"{key}={value!r:.40}; expected 64 hexadecimal digits"
    size = entry.get("bytes")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"bytes={size!r:.40}; expected a whole number of bytes"
    return None


def _is_regular(path: Path) -> bool:
    """A regular file itself, not a link to one (lstat: a link is never followed)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def verify(path) -> None:
    """Check a file of a run directory against the size and SHA-256 its manifest recorded when the run
    wrote it, before anything reads it. A file in a directory without a manifest is not checked
    (nothing says what it should be). A mismatch is one `ChecksumError` naming the file."""
    path = Path(path)
    manifest = read_manifest(path.parent)
    if manifest is None:
        return
    entry = manifest["files"].get(path.name)
    if entry is None:
        raise ChecksumError(f"{path}: not a file the run in {path.parent} wrote ({MANIFEST} does not list it); not used")
    if not _is_regular(path):
        raise ChecksumError(f"{path}: not a regular file (a link, a folder or a device), so not the file the run wrote")
    size, replacing = path.stat().st_size, entry.get("replacing")  # (replacing: the size of that version is not kept)
    digest = sha256_file(path) if size == entry["bytes"] or replacing else None
    if digest is None or digest not in (entry["sha256"], replacing):
        found = f"SHA-256 {digest[:16]}..." if digest else f"{size:,} bytes"
        recorded = f"SHA-256 {entry['sha256'][:16]}..." if digest else f"{entry['bytes']:,}"
        raise ChecksumError(
            f"{path}: corrupt or changed since the run wrote it ({found}, {MANIFEST} recorded {recorded}); "
            f"not used: restore the run from a copy, or run it again (--force starts it over)"
        )


def run_of(path) -> Optional[Path]:
    """The run directory `path` stands for (the directory itself, or the folder of a file in it), or
    None outside a run. A file named for its run is verified first: whichever file of a run a reader
    is given, a changed one is refused, even when the reader then uses the run's other files."""
    path = Path(path)
    if path.is_dir():
        return path if (path / MANIFEST).is_file() else None
    if not (path.parent / MANIFEST).is_file():
        return None
    if path.name != MANIFEST:  # the manifest is checked by reading it
        verify(path)
    read_manifest(path.parent)
    return path.parent


def holds(directory, name: str) -> bool:
    """Whether `directory` holds the file `name`, verified where it is a run's (a marker a reader
    decides by, such as a pretraining run's pretrain.json, counts only as the run wrote it)."""
    path = Path(directory) / name
    if not path.is_file():
        return False
    verify(path)
    return True


def is_scratch(name: str) -> bool:
    """Names only a run uses for itself: its lock, feature cache and write staging (and the
    manifest's own temporary file)."""
    return name in (LOCK, CACHE_DIR) or name.startswith((STAGING, f".{MANIFEST}.", f".{LOCK}."))


class Survey:
    """What a directory holds, as far as a run is concerned."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.manifest = read_manifest(self.dir) if self.dir.is_dir() else None
        present = sorted(p.name for p in self.dir.iterdir()) if self.dir.is_dir() else []
        listed = set(self.manifest["files"]) if self.manifest else set()
        self.run_files = [n for n in present if n in listed]  # the run's files that exist
        self.foreign = [n for n in present if n not in listed and n != MANIFEST and not is_scratch(n)]
        # A name the run recorded that is now a folder, a link or a device: someone else put it there.
        self.not_files = [n for n in self.run_files if not _is_regular(self.dir / n)]
        self.has_checkpoint = "checkpoint.pt" in self.run_files


def check(directory, *, resume: bool, force: bool) -> None:
    """Before a run touches `directory`: refuse what would lose or mix up anyone's files."""
    d = Path(directory)
    if resume and force:
        raise RunDirError("--resume and --force contradict each other: continue the run, or start it over")
    if d.exists() and not d.is_dir():
        raise RunDirError(f"--out {d} is a file")
    s = Survey(d)
    if s.manifest is None and s.foreign:
        if resume and (d / "checkpoint.pt").is_file():
            return  # a run from before manifests existed: RunDir.start says it cannot verify it
        what = "--resume: no checkpoint.pt in it to continue from" if resume else "choose an empty or new directory"
        older = " (a run of an older tinyvit, without a manifest, is removed by hand)" if "checkpoint.pt" in s.foreign else ""
        raise RunDirError(f"--out {d} holds files that are not from a tinyvit run ({_names(s.foreign)}); {what}{older}")
    if s.not_files:
        raise RunDirError(
            f"--out {d}: {_names(s.not_files)} {'is' if len(s.not_files) == 1 else 'are'} not the regular "
            f"file{'s' if len(s.not_files) > 1 else ''} the run wrote (a folder, a link or a device); a run removes "
            f"and reads only its own files: move {'it' if len(s.not_files) == 1 else 'them'} away, or choose another --out"
        )
    if resume:
        if not s.has_checkpoint:
            raise RunDirError(
                f"--resume: the run in {d} stopped before its first checkpoint, so there is nothing to continue; "
                f"--force removes the {_files(len(s.run_files))} of that run ({_names(s.run_files)}) and starts it over"
                if s.manifest is not None else f"--resume: no checkpoint.pt in {d} to continue from"
            )
        return
    if s.manifest is None:
        return  # empty, or new
    if s.foreign:
        raise RunDirError(
            f"--out {d} holds a tinyvit run and files it did not write ({_names(s.foreign)}); "
            + ("--force removes only a run's own files: move those away first, or choose another --out" if force else
               "pass --resume to continue the run, or choose another --out" if s.has_checkpoint else "choose another --out")
        )
    if force:
        return
    if s.has_checkpoint:
        raise RunDirError(f"--out {d} holds a tinyvit run: pass --resume to continue it, or --force to remove its "
                          f"{_files(len(s.run_files))} ({_names(s.run_files)}) and start over")
    raise RunDirError(f"--out {d} holds a run that stopped before its first checkpoint: --force removes the "
                      f"{_files(len(s.run_files))} of that run ({_names(s.run_files)}) and starts over")


# ---------------------------------------------------------------------------------------------
# The lock: one live run per directory.
# ---------------------------------------------------------------------------------------------


class Lock:
    """An exclusive flock on DIR/.tinyvit-run.lock, which holds its owner's PID and host."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, path, log: Callable[[str], None] = print) -> "Lock":
        import fcntl  # POSIX

        path = Path(path)
        while True:
            # O_NOFOLLOW: a lock that is a link would have the run write its PID into the link's
            # target; O_NONBLOCK: a FIFO in its place must not hang the open (refused below).
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                    raise RunDirError(f"{path}: not a regular file (a link, a folder or a device); tinyvit writes its "
                                      f"lock only into a file of its own: remove it, or choose another --out") from None
                raise
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                os.close(fd)  # a hard link's other name would see the lock's bytes
                raise RunDirError(f"{path}: not a regular file of its own ("
                                  + ("a hard link" if stat.S_ISREG(info.st_mode) else "a FIFO, socket or device")
                                  + "); tinyvit writes its lock only into a file of its own: remove it, or choose another --out")
            os.set_blocking(fd, True)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _holder(fd)
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):  # a file system without locks
                    log(f"warning: cannot lock {path} ({e.strerror}): make sure no other run uses {path.parent}")
                    return cls(path, -1)
                raise RunDirError(
                    f"--out {path.parent} is in use by process {holder.get('pid', '?')} on {holder.get('host', '?')} "
                    f"(since {holder.get('since', '?')}); two runs would mix their files: wait for it, stop it, or "
                    f"choose another --out"
                ) from None
            # A holder removes the file when it lets go: if it did so between our open and our flock,
            # we hold a lock on a file no one else will open. Try again with the one at `path`.
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                os.close(fd)
                continue
            previous = _holder(fd)
            if previous.get("pid") is not None:
                # The kernel dropped its flock, so that run is over; its PID may since belong to
                # an unrelated process, so nothing is said about whether that process still runs.
                log(f"{path.parent}: taking over the lock of process {previous['pid']} on {previous.get('host', '?')}, "
                    f"which no longer holds it (the run that wrote it is over)")
            me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, me, 0)
            return cls(path, fd)

    def release(self) -> None:
        if self.fd < 0:
            return
        self.path.unlink(missing_ok=True)  # still holding the lock: no one is between open and flock on it
        os.close(self.fd)
        self.fd = -1


def _holder(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------
# The run directory: open (lock), start (fresh or resumed), write files, close.
# ---------------------------------------------------------------------------------------------


class RunDir:
    """The --out of one live run (rank 0 only). Every file goes through `write`/`write_files`."""

    def __init__(self, directory: Path, lock: Lock, created: list, log: Callable[[str], None]):
        self.dir, self.lock, self.created, self.log = directory, lock, created, log
        self.manifest: Optional[dict] = None

    @classmethod
    def open(cls, directory, log: Callable[[str], None] = print) -> "RunDir":
        """Create the directory if needed, check that it is writable, and lock it. Cheap, and before
        any model or data is set up, so that a run that cannot write fails at once."""
        d = Path(directory)
        if d.exists() and not d.is_dir():
            raise RunDirError(f"--out {d} is a file")
        created = [p for p in (d, *d.parents) if not p.exists()]  # removed again if the run never starts
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=d, prefix=STAGING)
            os.close(fd)
            os.unlink(probe)
            lock = Lock.acquire(d / LOCK, log)
        except RunDirError:
            _remove_empty(created)
            raise
        except OSError as e:
            _remove_empty(created)
            raise RunDirError(f"--out {d} is not writable ({e.strerror or e}); choose another --out") from None
        return cls(d, lock, created, log)

    def abandon(self) -> None:
        """The run failed before it wrote anything: unlock, and remove the folders `open` created."""
        self.lock.release()
        _remove_empty(self.created)

    def close(self) -> None:
        shutil.rmtree(self.dir / CACHE_DIR, ignore_errors=True)
        self.lock.release()
        if self.manifest is None:  # never started (`start` failed): as `abandon`
            _remove_empty(self.created)

    def start(self, fresh: bool, dataset: dict) -> None:
        """Fresh: remove the files an earlier run recorded (`check` has made sure nothing else is
        there), then write a new manifest before anything else. Resumed: keep the manifest, settle
        writes a kill interrupted. Either way, remove the scratch space a killed run left."""
        for p in self.dir.iterdir():
            if p.name.startswith(STAGING) or p.name == CACHE_DIR:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
        old = read_manifest(self.dir)  # every name checked: a plain name, never a path
        if fresh or old is None:
            if old is not None:
                for name in old["files"]:
                    remove_own_file(self.dir, name)
            elif not fresh:
                self.log(f"warning: {self.dir} has no {MANIFEST} (a run of an older tinyvit): checkpoint.pt "
                         f"could not be verified; files are recorded from now on")
            manifest = {"format": FORMAT, "version": VERSION, "dataset": dataset, "files": {}}
        else:
            manifest = old  # with the data it runs on now (check_dataset has allowed any change)
            old["dataset"] = {**(old.get("dataset") or {}), **{k: v for k, v in dataset.items() if v is not None}}
            for name, entry in old["files"].items():  # a write that a kill cut between record and rename
                previous, path = entry.pop("replacing", None), self.dir / name
                if previous and _is_regular(path) and sha256_file(path) == previous:
                    entry.update(sha256=previous, bytes=path.stat().st_size)  # the old version stayed
        try:
            self._save(manifest)
        except (OSError, RuntimeError) as e:
            full = _disk_full(e)
            if full is None:
                raise
            if fresh and old is not None:  # its files are gone: a manifest listing them would describe nothing
                (self.dir / MANIFEST).unlink(missing_ok=True)
            kept = "the run's files are as they were" if not fresh else \
                "the files of the run before it were removed (--force)" if old is not None else "nothing was written"
            raise WriteError(f"cannot write {MANIFEST} into {self.dir} (disk full? {full}); the run did not start, "
                             f"{kept}; free some space, or choose another --out") from None
        self.manifest = manifest

    def check_dataset(self, now: dict, allow_change: bool, what: str) -> None:
        """--resume: the splits must be the ones the run began with (`now` as from `fingerprints`)."""
        recorded = (self.manifest or read_manifest(self.dir) or {}).get("dataset")
        if not recorded:
            return  # a run from before fingerprints
        unknown = [k for k, v in now.items() if v is None]
        if unknown:
            self.log(f"note: cannot fingerprint the {' and '.join(unknown)} split of {what}: a change of data goes unnoticed")
        changed = [k for k, v in now.items() if v is not None and recorded.get(k) not in (None, v)]
        if not changed:
            return
        if not allow_change:
            raise RunDirError(
                f"--resume: the {' and '.join(changed)} data of {what} is not what the run began with "
                f"(fingerprint {now[changed[0]][:12]}, recorded {recorded[changed[0]][:12]}); "
                f"pass --allow-data-change to continue on this data on purpose"
            )
        self.log(f"note: --allow-data-change: continuing on changed {' and '.join(changed)} data ({what})")

    # -- writing ----------------------------------------------------------------------------

    def write(self, name: str, write: Callable[[BinaryIO], object]) -> None:
        """Write one file: write(f) with a binary file object."""
        def make(d: Path):
            with open(d / name, "wb") as f:
                write(f)
        self.write_files([name], make)

    def write_json(self, name: str, obj) -> None:
        self.write(name, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))

    def write_files(self, names: list, make: Callable[[Path], object]) -> None:
        """make(folder) writes the files `names` into an empty folder; they are installed in that order."""
        staging = Path(tempfile.mkdtemp(dir=self.dir, prefix=STAGING))
        installed = []
        try:
            make(staging)
            for name in names:
                self._install(staging / name, name)
                installed.append(name)
        except (OSError, RuntimeError) as e:
            full = _disk_full(e)
            if full is None:
                raise
            # Nothing was renamed over a file that is not complete: every file the run had is as it was.
            name = next(n for n in names if n not in installed)
            kept = ("the previous checkpoint is kept" if name == "checkpoint.pt" else f"the previous {name} is kept") \
                if _is_regular(self.dir / name) else f"no {name} was there before, and none is now"
            raise WriteError(f"cannot write {name} into {self.dir} (disk full? {full}); {kept}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _install(self, staged: Path, name: str) -> None:
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
        entry = {"sha256": sha256_file(staged), "bytes": staged.stat().st_size}
        old = self.manifest["files"].get(name)
        if old is not None and old["sha256"] != entry["sha256"] and (self.dir / name).exists():
            entry["replacing"] = old["sha256"]  # until the rename below, the old version is the one there
        self.manifest["files"][name] = entry  # recorded before it exists: --force can always remove it
        self._save()
        os.replace(staged, self.dir / name)
        if entry.pop("replacing", None):
            self._save()

    def _save(self, manifest: Optional[dict] = None) -> None:
        manifest = manifest or self.manifest
        write_atomic(self.dir / MANIFEST, lambda f: f.write((json.dumps(manifest, indent=1) + "\n").encode()))


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _disk_full(e: BaseException) -> Optional[str]:
    """The reason, if `e` (or what caused it) is a write refused for space; None for anything else.
    torch.save reports a failed write as a RuntimeError of its zip writer ("file write failed",
    "unexpected pos"), not as the OSError underneath."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return os.strerror(e.errno)
        if isinstance(e, RuntimeError) and any(s in str(e) for s in ("file write failed", "unexpected pos", "No space left")):
            return "the checkpoint writer's write failed"
        e = e.__cause__ or e.__context__
    return None


def remove_own_file(directory: Path, name: str) -> None:
    """Remove DIR/name if it is a regular file directly in DIR (a link is never followed, a folder
    never entered; `check` has refused both before anything was removed). `name` must be plain."""
    if _bad_name(name):
        raise RunDirError(f"{directory}: {name!r}: {_bad_name(name)}")
    path = Path(directory) / name
    if _is_regular(path):
        path.unlink()
    elif os.path.lexists(path):
        raise RunDirError(f"{path}: not a regular file the run wrote (a folder, a link or a device); left as it is")


def _remove_empty(folders: list) -> None:
    for p in folders:  # deepest first
        try:
            p.rmdir()
        except OSError:
            return


# ---------------------------------------------------------------------------------------------
# Dataset fingerprints.
# ---------------------------------------------------------------------------------------------


def fingerprint(dataset) -> Optional[str]:
    """A SHA-256 that changes when the dataset's samples or labels do, or None (see the module docstring)."""
    own = getattr(dataset, "fingerprint", None)
    if callable(own):
        return str(own())
    h = hashlib.sha256(type(dataset).__qualname__.encode())
    base = getattr(dataset, "base", getattr(dataset, "dataset", None))
    samples = getattr(dataset, "samples", getattr(dataset, "imgs", None))
    params = getattr(dataset, "__dict__", None)
    if base is not None and hasattr(dataset, "indices"):
        parent = fingerprint(base)
        if parent is None:
            return None
        h.update(parent.encode() + json.dumps([int(i) for i in dataset.indices]).encode())
    elif isinstance(getattr(dataset, "_fingerprint", None), str):  # a Hugging Face datasets.Dataset
        h.update(dataset._fingerprint.encode())
    elif isinstance(samples, list) and all(isinstance(s, tuple) and len(s) == 2 for s in samples[:1]):
        root = getattr(dataset, "root", None)
        for path, label in samples:  # a stat per file: no image is read
            rel = os.path.relpath(path, root) if root is not None else str(path)
            h.update(f"{rel}\0{os.stat(path).st_size}\0{label}\n".encode())
    elif hasattr(dataset, "data") and hasattr(dataset, "targets") and hasattr(dataset.data, "shape"):
        import numpy as np

        for array in (dataset.data, dataset.targets):
            array = np.ascontiguousarray(array.numpy() if hasattr(array, "numpy") else np.asarray(array))
            h.update(str((array.dtype, array.shape)).encode())
            h.update(memoryview(array).cast("B"))
    elif params and all(isinstance(v, (bool, int, float, str)) for v in params.values()):
        h.update(json.dumps(params, sort_keys=True).encode())
    else:
        return None
    return h.hexdigest()


def fingerprints(train, val) -> dict:
    return {"train": fingerprint(train), "val": fingerprint(val)}


def read_metrics(run_dir) -> list[dict]:
    """metrics.jsonl of a tinyvit.finetune run: one dict per epoch, the last with the columns every
    reader needs."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise MissingFileError(f"{path}: no metrics.jsonl; is {run_dir} the --out of a tinyvit.finetune run?")
    verify(path)  # in a run directory: the epochs the run wrote
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TinyvitError(f"{path}: not readable ({e})") from None
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise TinyvitError(f"{path}, line {i}: not valid JSON ({e})") from e
    if not rows:
        raise TinyvitError(f"{path} holds no epochs yet")
    missing = {"epoch", "val_acc", "val_loss", "train_acc", "seconds"} - set(rows[-1])
    if missing:
        raise TinyvitError(f"{path}: the last epoch lacks {sorted(missing)}")
    return rows


def read_classes(model_dir: Path) -> list[str] | None:
    """classes.json beside a fine-tuned model (written by tinyvit.finetune), or None."""
    path = Path(model_dir) / "classes.json"
    if not path.is_file():
        return None
    verify(path)  # in a run directory: the list the run wrote
    try:
        classes = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TinyvitError(f"{path}: not a JSON list of class names ({e})") from e
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise TinyvitError(f"{path}: expected a JSON list of class names")
    return classes


def read_json(path, error: type = TinyvitError) -> dict:
    """A JSON object from `path`, verified first where it is a file of a run; `error` names the file."""
    verify(path)
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: cannot read this JSON file ({e})") from e
    if not isinstance(obj, dict):
        raise error(f"{path}: expected a JSON object, found a {type(obj).__name__}")
    return obj


def read_summary(run_dir) -> dict:
    """summary.json of a run (tinyvit.finetune's or tinyvit.pretrain's), verified first."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise MissingFileError(f"{path}: no summary.json; the run in {run_dir} has not finished")
    return read_json(path)
