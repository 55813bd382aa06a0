"""Writing results so that nothing half-written is ever left where it could be taken for one, and
claiming an output so that no run replaces what a user made or races another run.

- Every file is written under a temporary name beside its target and renamed when complete
  (:func:`write_text`, :func:`write_json`, :func:`atomic_path`); a result directory is built
  under a hidden name and swapped into place (:func:`staged_dir`).
- Every command claims its output first (:func:`claim_output`, or the :func:`claims_output`
  decorator): a lock beside it (``.OUT.lock``, an ``flock`` the kernel drops when the process
  dies, so a killed run never blocks the next) and a refusal, in one line, of an existing output
  unless ``--overwrite`` or it is this same run's own unfinished work, which is resumed (or, for a
  pipeline that keeps every step, ``reusable``, its finished work too, which is reused).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from speechprune.errors import UserError

RUN_MARKER = ".speechprune-run.json"  # inside an unfinished output of a resumable command
MADE_BY = ".speechprune-made-by.json"  # inside a finished directory output: the command that made it
# Test-only: pause (for minutes) before committing a written file or directory whose path matches
# this regex, after writing the signal file named below, so a test can kill a run at that moment.
PAUSE_ENV = "SPEECHPRUNE_TEST_PAUSE_BEFORE_COMMIT"
PAUSE_SIGNAL_ENV = "SPEECHPRUNE_TEST_PAUSE_SIGNAL"
PAUSE_SKIP_ENV = "SPEECHPRUNE_TEST_PAUSE_SKIP"  # pass this many matching commits first
_pause_matches = 0
# What a killed write leaves behind (atomic_path's and staged_dir's temporary names): not content.
LEFTOVER = re.compile(r"^\..+\.(tmp(\.\w+)?|partial|old)$")
# Settings that say how to run, not what to make: a rerun that changes them is the same run.
NOT_IN_SIGNATURE = ("overwrite", "resume", "fresh", "skip_bad", "reuse")  # how a run is made, not what
DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EFBIG: "the file grew past the size limit", errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


def _before_commit(path: Path) -> None:
    global _pause_matches
    pattern = os.environ.get(PAUSE_ENV)
    if pattern and re.search(pattern, str(path)):
        _pause_matches += 1
        if _pause_matches <= int(os.environ.get(PAUSE_SKIP_ENV, "0")):
            return
        signal_file = os.environ.get(PAUSE_SIGNAL_ENV)
        if signal_file:
            Path(signal_file).write_text(str(path))
        time.sleep(600)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: done once, at import, before any thread writes
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _usual_mode(path: Path, directory: bool = False) -> None:
    """tempfile (and some writers' own temporary files) make 0600 files and 0700 folders; a result
    gets the mode any other file the user makes would get (0644 and 0755 under the usual umask
    022), so colleagues can read it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


def _usual_modes(tree: Path) -> None:
    _usual_mode(tree, directory=True)
    for path in tree.rglob("*"):
        if not path.is_symlink():
            _usual_mode(path, directory=path.is_dir())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers that infer a format from it
    work), renamed onto ``path`` when the block ends without an exception, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        _usual_mode(Path(tmp))
        _before_commit(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically: a temporary file in the same folder, then a rename."""
    write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def staged_dir(out: str | Path, overwrite: bool = True, resume_signature: str | None = None) -> Iterator[Path]:
    """Build a result directory under a hidden temporary name and move it into place on success.

    On any exception the staging directory is removed, so ``out`` is either the complete old
    result, the complete new one, or absent (a kill between the two renames of the swap).
    With ``resume_signature`` the staging directory has a fixed name (``.OUT.partial``) and is
    kept by a killed run: a rerun with the same signature continues in it; another is wiped.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if resume_signature is None:
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    else:
        staging = out.parent / f".{out.name}.partial"
        if _read_marker(staging).get("signature") != resume_signature:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            write_json(staging / RUN_MARKER, {"signature": resume_signature})
        else:  # the killed run's half-written temporary files are not part of its work
            _remove([p for p in staging.rglob(".*") if LEFTOVER.match(p.name)])
    try:
        yield staging
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging / RUN_MARKER)
        _usual_modes(staging)
        _before_commit(out)
        _swap_in(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename ``staging`` onto ``out``; an old ``out`` is renamed aside first and removed after,
    so no moment shows a half-deleted result."""
    if not out.exists():
        os.replace(staging, out)
        return
    if not overwrite:
        raise FileExistsError(out)
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.replace(out, old / out.name)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _read_marker(directory: Path, name: str = RUN_MARKER) -> dict:
    try:
        marker = read_json(directory / name)
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def made_by(out: str | Path) -> str | None:
    """The command that made the output ``out`` (finished, or a resumable run's unfinished work),
    when it says so."""
    out = Path(out)
    if not out.is_dir():
        return None
    return _read_marker(out, MADE_BY).get("command") or _read_marker(out).get("command")


# ----------------------------------------------------------------------------- claiming an output
@dataclasses.dataclass
class Claim:
    out: Path
    resumed: bool  # this run's own unfinished work was found there and is continued


def run_signature(command: str, config: Any) -> str:
    """What a run makes: the command and its settings (less those in NOT_IN_SIGNATURE)."""
    settings = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    settings = {key: value for key, value in settings.items() if key not in NOT_IN_SIGNATURE}
    text = json.dumps({"command": command, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _is_main_process() -> bool:
    # under accelerate launch / torchrun only rank 0 claims; the others write into what it claimed
    return int(os.environ.get("RANK", "0")) == 0


def _os_error(option: str, out: Path, error: OSError) -> UserError:
    reason = DISK_ERRORS.get(error.errno, error.strerror or type(error).__name__)
    return UserError(f"{option} {out}: cannot write {error.filename or out}: {reason}")


@contextlib.contextmanager
def claim_output(out: str | Path, overwrite: bool, signature: str, resumable: bool = False,
                 directory: bool = True, clear: bool = False, option: str = "--out",
                 reusable: bool = False, command: str | None = None) -> Iterator[Claim]:
    """Claim ``out`` for one run, for the length of the block.

    Refused with one line: ``out`` is a file where a directory is wanted (or the reverse), its
    folder is not writable, another run holds it, or it already holds something that is not this
    run's unfinished work (``resumable`` commands leave a marker holding ``signature`` until
    they finish) and ``overwrite`` is false. With ``overwrite`` and ``clear`` the old output is
    removed now (commands that work inside ``out``); without ``clear`` it stays until the
    command's staged result replaces it. Disk errors inside the block become one line too.
    A ``reusable`` command (a pipeline whose every finished step is kept and reused, the study)
    keeps its marker when it finishes, marked finished: a rerun with the same settings reuses it.
    A directory output made by ``command`` says so (:data:`MADE_BY`); an output made by another
    command is refused even with ``overwrite``, which replaces only an output of the same command
    (the output of ``demo`` is not for ``scan`` to delete).
    """
    out = Path(out)
    if directory and out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} is a file, not a directory")
    if not directory and out.is_dir():
        raise UserError(f"{option} {out} is a directory, not a file")
    if not _is_main_process():
        _wait_for_main_claim(out, signature, resumable)
        yield Claim(out, resumed=False)
        return
    lock_path = out.parent / f".{out.name}.lock"
    lock = _lock(lock_path, option, out)
    try:
        resumed = False
        _remove_leftovers(out, inside=resumable)
        fresh = not _has_content(out)
        if not fresh:
            marker = _read_marker(out) if out.is_dir() else {}
            maker = made_by(out)
            if command and maker and maker != command:
                raise UserError(f"{option} {out} holds the output of 'speechprune {maker}', which "
                                f"'speechprune {command}' does not replace, even with --overwrite; "
                                f"choose another {option}")
            if resumable and marker.get("signature") == signature:
                resumed = True
                what = "reusing the finished steps of the same run" if marker.get("finished") else \
                    "resuming the unfinished run"
                print(f"speechprune: {what} in {out}", file=sys.stderr, flush=True)
            elif overwrite:
                print(f"speechprune: {out} will be replaced (--overwrite)", file=sys.stderr, flush=True)
                if clear:
                    shutil.rmtree(out) if out.is_dir() else out.unlink()
            else:
                what = ("holds a finished run with other settings" if marker.get("finished") else
                        "holds an unfinished run with other settings") if marker else "already exists"
                raise UserError(f"{option} {out} {what}; pass --overwrite to replace it, or choose another {option}")
        try:
            if resumable:
                out.mkdir(parents=True, exist_ok=True)
                if not resumed or reusable:  # (a reused finished run is unfinished again while it runs)
                    write_json(out / RUN_MARKER, {"signature": signature, "pid": os.getpid(),
                                                  **({"command": command} if command else {})})
            yield Claim(out, resumed)
        except Exception as error:
            if resumable and fresh and out.is_dir() and {p.name for p in out.iterdir()} <= {RUN_MARKER}:
                shutil.rmtree(out, ignore_errors=True)  # failed before doing anything: leave nothing
            if isinstance(error, OSError) and error.errno in DISK_ERRORS:
                raise _os_error(option, out, error) from None
            raise
        if reusable:
            write_json(out / RUN_MARKER, {"signature": signature, "finished": True,
                                          **({"command": command} if command else {})})
        elif resumable:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out / RUN_MARKER)
        if command and directory and out.is_dir():
            write_json(out / MADE_BY, {"command": command})
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # before the close: a run that opened it meanwhile sees it gone and retries
        os.close(lock)  # releases the flock


def _wait_for_main_claim(out: Path, signature: str, resumable: bool, seconds: float = 600) -> None:
    """Other ranks write into OUT only once rank 0 has claimed it (its marker names this run):
    written earlier, their files would make rank 0 take OUT for someone else's."""
    deadline = time.monotonic() + seconds
    while resumable and _read_marker(out).get("signature") != signature:
        if time.monotonic() > deadline:
            raise UserError(f"--out {out}: rank 0 did not claim it within {seconds:.0f} s")
        time.sleep(0.1)


def _lock(path: Path, option: str, out: Path) -> int:
    """An exclusive ``flock`` on ``path`` (created if need be), holding this process's pid."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise _os_error(option, out, error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"{option} {out} is being written by another speechprune run (pid {holder}); "
                            "wait for it to finish or choose another --out") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        os.close(fd)  # the run that held it removed it as it finished: lock the new one


def _remove_leftovers(out: Path, inside: bool) -> None:
    """What killed runs left (staging folders beside ``out``; with ``inside``, temporary files
    anywhere under it): safe to remove while the lock is held, nobody else is writing them."""
    # ".OUT.x1y2.partial", and what a save nested in that staging left: "..OUT.x1y2.partial.z3.partial"
    name, random = re.escape(out.name), "[a-z0-9_]{8}"  # tempfile.mkdtemp's random part
    beside = re.compile(rf"^(\.{name}\.{random}\.(partial|old)|\.\.{name}\.{random}\.partial\.{random}\.partial)$")
    doomed = [p for p in out.parent.iterdir() if beside.match(p.name)]
    if inside and out.is_dir():  # a nested step's resumable staging (it holds a marker) is its own to judge
        doomed += [p for p in out.rglob(".*") if LEFTOVER.match(p.name) and not (p / RUN_MARKER).is_file()]
    _remove(doomed)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _has_content(out: Path) -> bool:
    if not out.is_dir():
        return out.exists()
    return any(not LEFTOVER.match(entry.name) for entry in out.iterdir())


def claims_output(command: str, resumable: bool | Callable[[Any], bool] = False,
                  directory: bool | Callable[[Any], bool] = True,
                  clear: bool | None = None, reusable: bool = False) -> Callable:
    """Decorate a command ``f(config)`` whose config has ``out`` and ``overwrite``: the run holds
    :func:`claim_output` on ``config.out`` while it runs. ``clear`` defaults to ``resumable``
    (a command that works inside OUT starts an overwrite from an empty OUT). ``directory`` and
    ``resumable`` may be functions of the config (a command whose OUT is a file or a folder, as the
    config says; a file OUT is never resumable inside)."""
    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def run(config: Any, *args: Any, **kwargs: Any) -> Any:
            is_directory = directory(config) if callable(directory) else directory
            is_resumable = resumable(config) if callable(resumable) else resumable
            with claim_output(config.out, config.overwrite, run_signature(command, config), is_resumable,
                              is_directory, is_resumable if clear is None else clear, reusable=reusable,
                              command=command):
                return function(config, *args, **kwargs)
        return run
    return decorate
