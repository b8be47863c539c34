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
import shutil
from contextlib import contextmanager


class FileError(RuntimeError):
    """A file the user asked us to write (or not to overwrite) cannot be written; the message says why."""


def make_folder(folder):
    """os.makedirs with one clear line when a part of the path is a file or not writable."""
    try:
        os.makedirs(folder or ".", exist_ok=True)
    except OSError as e:
        raise FileError(f"cannot create the folder {folder} ({e.strerror}); choose another path") from None


def atomic_write(path, write, folder=False):
    """Calls write(temporary path) (with folder=True, a temporary folder made for it), then renames the result to
    `path`: a reader sees the old version or the new one, never half of one, and a failed write leaves the old one
    as it was. With folder=True, a folder that is there is replaced."""
    make_folder(os.path.dirname(path))
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    old = tmp + ".old"  # a folder cannot be renamed onto a folder: the old one moves here first
    try:
        if folder:
            os.makedirs(tmp)
        write(tmp)
        if folder and os.path.exists(path):
            os.rename(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if os.path.exists(old):
                os.rename(old, path)  # put the old folder back
            raise
    except OSError as e:
        raise FileError(f"cannot write {path} ({e.strerror or e}); nothing there was changed") from None
    finally:
        for leftover in (tmp, old):
            if os.path.isdir(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
            elif os.path.exists(leftover):
                os.remove(leftover)


def text_writer(chunks):
    """A write(temporary path) for atomic_write that writes the strings `chunks` (a list or a generator)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(chunks)
    return write


def write_text(path, text):
    atomic_write(path, text_writer([text]))


def write_json(path, record):
    write_text(path, json.dumps(record, indent=1))


def read_json(path, *keys):
    """A JSON file we wrote earlier, or the value at `keys` inside it; a truncated or hand-edited one is one clear
    line, not a traceback."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
        for key in keys:
            value = value[key]
        return value
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise FileError(f"{path}: not a readable tpv record ({type(e).__name__}: {e}); delete it and run the step "
                        f"that writes it again") from None


def refuse_existing(path, force, what="finished result"):
    if os.path.exists(path) and not force:
        raise FileError(f"{path} exists (a {what}); pass --force to replace it")


@contextmanager
def exclusive(path):
    """`with exclusive(path):` holds path + ".lock" meanwhile; a lock whose process has died is taken over."""
    lock = path + ".lock"
    make_folder(os.path.dirname(lock))
    mine = f"{lock}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        with open(mine, "w") as f:
            f.write(str(os.getpid()))
        for attempt in range(2):
            try:
                os.link(mine, lock)  # atomic, and the lock holds our process id from its first moment
                break
            except FileExistsError:
                holder = lock_holder(lock)
                if attempt or holder is None or process_alive(holder):
                    raise FileError(f"{lock}: process {holder} is writing this run now; wait for it to finish (or "
                                    f"stop it) and run again") from None
                os.remove(lock)  # left behind by a process that died: take it over
    except OSError as e:
        raise FileError(f"cannot create {lock} ({e.strerror}); choose a writable folder") from None
    finally:
        if os.path.exists(mine):
            os.remove(mine)
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
