"""
How tpv writes files, in one place: every artefact (prompt files, run records, checkpoints, data caches,
models, results) goes through these functions, so that a crash, a full disk or a second process writing the
same file never loses or corrupts what is already there.

- atomic_write: the bytes go to a temporary file with a name of its own (process id and a random part: two
  writers never share one) in the same folder, then one rename puts it in place. A reader sees the old file or
  the new one, never half of one; a failed write removes its temporary file and leaves the old one as it was.
- refuse_existing: a finished artefact is replaced only when the user said --force.
- exclusive: a lock file created atomically, naming its writer (pid, start time, boot, host), so that a second
  process writing the same run is refused with one line instead of both finishing and one result silently
  replacing the other, and a lock left by a dead process (or a reused pid) is taken over.
"""
import errno
import json
import os
import re
import secrets
import shutil
import socket
from contextlib import contextmanager

from safetensors import SafetensorError


class FileError(RuntimeError):
    """A file the user asked us to write (or not to overwrite) cannot be written; the message says why."""


def make_folder(folder):
    """os.makedirs with one clear line when a part of the path is a file or not writable."""
    try:
        os.makedirs(folder or ".", exist_ok=True)
    except OSError as e:
        cause = ("a part of the path is a file; choose another path" if e.errno in (errno.EEXIST, errno.ENOTDIR)
                 else write_cause(e))
        raise FileError(f"cannot create the folder {folder}: {cause}") from None


def atomic_write(path, write, folder=False):
    """Calls write(temporary path) (with folder=True, a temporary folder made for it), then renames the result to
    `path`: a reader sees the old version or the new one, never half of one, and a failed write (a full disk, a
    read-only file system, no permission: whatever the writer raises, safetensors' and numpy's errors included)
    leaves the old one as it was and no temporary file. With folder=True, a folder that is there is replaced; a
    path of another kind (a file where a folder goes, a folder where a file goes) is never replaced."""
    check_replaceable(path, folder)
    make_folder(os.path.dirname(path))
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    old = tmp + ".old"  # a folder cannot be renamed onto a folder: the old one moves here first
    try:
        if folder:
            os.makedirs(tmp)
        write(tmp)
        if folder and os.path.isdir(path):
            os.rename(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if os.path.exists(old):
                os.rename(old, path)  # put the old folder back
            raise
    except WRITE_ERRORS as e:
        raise FileError(f"cannot write {path}: {write_cause(e)}; nothing there was changed") from None
    finally:
        for leftover in (tmp, old):
            remove_quietly(leftover)


# what a failed write raises: OSError from Python and numpy, SafetensorError from safetensors' Rust writer (which
# names the OS error only in its text)
WRITE_ERRORS = (OSError, SafetensorError)
CAUSES = {errno.ENOSPC: "no space left on the device; free some space or choose another folder",
          errno.EDQUOT: "the disk quota is exceeded; free some space or choose another folder",
          errno.EROFS: "the file system is read-only; choose a writable folder",
          errno.EACCES: "permission denied; choose a folder you may write to",
          errno.EPERM: "permission denied; choose a folder you may write to",
          errno.EFBIG: "the file is larger than this process may write (ulimit -f); raise the limit",
          errno.EIO: "an input/output error (a failing disk or network file system?)"}


def write_cause(e):
    """Why a write failed, in words, from the OS error number wherever the writer put it (safetensors' Rust
    writer: "IoError(Os { code: 28, ... })" in its text)."""
    number = getattr(e, "errno", None)
    if number is None:
        found = re.search(r"(?:code: |os error )(\d+)", str(e))
        number = int(found.group(1)) if found else None
    if number in CAUSES:
        return CAUSES[number]
    if number is not None:
        return os.strerror(number)
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no reason given'}"


def check_replaceable(path, folder):
    """A path atomic_write may replace: absent, or of the kind it writes (a symlink is never followed or replaced)."""
    if os.path.islink(path) or (os.path.lexists(path) and os.path.isdir(path) != folder):
        kind = "a link" if os.path.islink(path) else "a folder" if os.path.isdir(path) else "a file"
        raise FileError(f"{path} is {kind}, not the {'folder' if folder else 'file'} tpv writes there; move it away "
                        f"or choose another path")


def remove_quietly(path):
    """Removes a temporary file or folder, if it is there."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)
    except OSError:
        pass  # a read-only folder keeps nothing of ours: the write that made it could not have happened either


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
    """`with exclusive(path):` holds path + ".lock" meanwhile. The lock names its writer so that no pid reuse
    fools a later process (lock_state): a lock whose writer has died (or whose pid now belongs to another process,
    this one included: a container restarted after a kill) is taken over; one tpv cannot judge is named, with how
    to remove it safely."""
    lock = path + ".lock"
    make_folder(os.path.dirname(lock))
    mine, me = f"{lock}.{os.getpid()}-{secrets.token_hex(4)}.tmp", json.dumps(identity())
    try:
        with open(mine, "w") as f:
            f.write(me)
        for attempt in range(2):
            try:
                os.link(mine, lock)  # atomic, and the lock names its writer from its first moment
                break
            except FileExistsError:
                state, words = lock_state(lock)
                if attempt or state != "dead":
                    raise FileError(words) from None
                os.remove(lock)  # left behind by a process that died: take it over
    except OSError as e:
        raise FileError(f"cannot create {lock}: {write_cause(e)}") from None
    finally:
        remove_quietly(mine)
    try:
        yield
    finally:
        if read_lock(lock) == me:
            os.remove(lock)


def identity(pid=None):
    """What tells a process apart from every other, now and later: its pid, its start time (clock ticks after
    boot, from /proc/<pid>/stat; None where there is no /proc), the boot it started in and the host."""
    pid = pid or os.getpid()
    return {"pid": pid, "start": start_time(pid), "boot": boot_id(), "host": socket.gethostname()}


def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])  # field 22; the name in (...) may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def read_lock(lock):
    try:
        with open(lock) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def lock_writer(text):
    """A lock's writer as identity() gives it, or {"pid": N} for a lock of an older tpv (its pid alone), or None
    for a lock tpv did not write (empty, damaged, foreign)."""
    try:
        writer = json.loads(text)
    except (TypeError, ValueError):
        return None
    if type(writer) is int:
        writer = {"pid": writer}
    if not isinstance(writer, dict) or type(writer.get("pid")) is not int or writer["pid"] < 1:
        return None
    return writer


def lock_state(lock):
    """-> ("live" | "dead" | "unknown", a line for the user). Dead: its pid is gone, or belongs to a process that
    started later (the pid was reused), or to this process (which has not taken the lock), or the machine was
    rebooted since. Unknown: tpv cannot tell (no writer in it; a writer on another host; an older tpv's bare pid
    of a process that runs)."""
    writer = lock_writer(read_lock(lock))
    remove = f"if no tpv is writing this run, delete {lock} and run again"
    if writer is None:
        return "unknown", f"{lock} names no process tpv can identify (empty, damaged or not tpv's); {remove}"
    pid, me = writer["pid"], identity()
    if writer.get("host", me["host"]) != me["host"]:
        return "unknown", (f"{lock}: process {pid} on the host {writer['host']} is writing this run, or was (tpv "
                           f"cannot see that host's processes); {remove}")
    if pid == me["pid"] and writer.get("start") != me["start"] or not process_alive(pid):
        return "dead", ""
    if writer.get("boot") and me["boot"] and writer["boot"] != me["boot"]:
        return "dead", ""  # written before the machine was restarted
    if "start" not in writer:  # an older tpv's lock: a live pid may be another program's now
        return "unknown", (f"{lock}: process {pid} is writing this run, or the lock is stale (it does not say when its "
                           f"writer started, as older tpv's locks did not, so a reused pid looks alive); {remove}")
    if writer["start"] is not None and writer["start"] != start_time(pid):
        return "dead", ""  # the pid now belongs to a process that started later
    return "live", (f"{lock}: process {pid} is writing this run now; wait for it to finish (or stop it) and run "
                    f"again")


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:  # a pid no system has
        return False
    return True


# what tpv.py tiny-model writes into its folder (either family): --force replaces a folder holding these and
# nothing else
TINY_MODEL_FILES = {"config.json", "model.safetensors", "spiece.model", "tokenizer.json", "tokenizer_config.json"}


def check_model_folder(path, force):
    """tiny-model replaces a whole folder: only an empty one, or with --force one that holds a model and nothing
    else. A file, a link or a folder holding anything else is never replaced."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        raise FileError(f"{path} is {'a link' if os.path.islink(path) else 'a file'}, not a model folder; "
                              f"choose another path (tiny-model writes a folder there)")
    try:
        held = sorted(os.listdir(path))
    except OSError as e:
        raise FileError(f"cannot read the folder {path}: {write_cause(e)}") from None
    others = [name for name in held if name not in TINY_MODEL_FILES]
    if others:
        raise FileError(f"{path} holds {others[0]}{f' and {len(others) - 1} more' if len(others) > 1 else ''},"
                              f" which tiny-model does not write; choose another folder (even --force replaces only "
                              f"a model folder)")
    if held and not force:
        raise FileError(f"{path} exists and is not empty (a model: {', '.join(held)}); pass --force to "
                              f"replace it")
