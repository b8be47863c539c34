"""
How tpv writes files, in one place: every artefact (prompt files, run records, checkpoints, data caches,
models, results) goes through these functions, so that a crash, a full disk or a second process writing the
same file never loses or corrupts what is already there.

- atomic_write: the bytes go to a temporary file with a name of its own (process id and a random part: two
  writers never share one) in the same folder, then one rename puts it in place. A reader sees the old file or
  the new one, never half of one; a failed write removes its temporary file and leaves the old one as it was.
- refuse_existing: a finished artefact is replaced only when the user said --force.
- exclusive: a lock file created with O_EXCL, so that a second process writing the same run is refused with
  one line instead of both finishing and one result silently replacing the other.
"""
import json
import os
import secrets
from contextlib import contextmanager


class FileError(RuntimeError):
    """A file the user asked us to write (or not to overwrite) cannot be written; the message says why."""


def make_folder(folder):
    """os.makedirs with one clear line when a part of the path is a file or not writable."""
    try:
        os.makedirs(folder or ".", exist_ok=True)
    except OSError as e:
        raise FileError(f"cannot create the folder {folder} ({e.strerror}); choose another path") from None


def atomic_write(path, write):
    """Calls write(temporary path), then renames the temporary file to `path`."""
    folder = os.path.dirname(path)
    make_folder(folder)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise FileError(f"cannot write {path} ({e.strerror or e}); nothing there was changed") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, record):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
    atomic_write(path, write)


def write_text(path, text):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def read_json(path, what="file"):
    """A JSON file we wrote earlier; a truncated or hand-edited one is one clear line, not a traceback."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise FileError(f"{path}: unreadable {what} ({e}); delete it and run the step that writes it again") \
            from None


def refuse_existing(path, force, what="finished result"):
    if os.path.exists(path) and not force:
        raise FileError(f"{path} exists (a {what}); pass --force to replace it")


@contextmanager
def exclusive(path):
    """`with exclusive(path):` holds path + ".lock" meanwhile; a lock whose process has died is taken over."""
    lock = path + ".lock"
    make_folder(os.path.dirname(lock))
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        holder = lock_holder(lock)
        if holder is not None and holder != os.getpid() and process_alive(holder):
            raise FileError(f"{lock}: process {holder} is writing this run now; wait for it to finish (or stop "
                            f"it) and run again") from None
        os.remove(lock)  # left behind by a process that died: take it over
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except OSError as e:
        raise FileError(f"cannot create {lock} ({e.strerror}); choose a writable folder") from None
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield
    finally:
        if lock_holder(lock) == os.getpid():
            os.remove(lock)


def lock_holder(lock):
    try:
        with open(lock) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
