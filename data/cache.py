"""
The canonical cache: one folder per task holding train/validation/test JSONL with the Hugging Face field
names and integer labels (the splits of the original distribution), plus meta.json. Written through
files.atomic_write, all files or none: a failed `prepare` leaves an existing cache untouched and no partial
files behind, and a finished cache is replaced only when the caller passes force (--force).

    data_cache/sst2/train.jsonl        {"sentence": "hide new secretions ...", "label": 0, "idx": 0}
"""
import codecs
import json
import os
import time

from support import files

from .tasks import JSON_KINDS, DataError, excerpt, text_problem

SPLITS = ("train", "validation", "test")
CACHE_FILES = tuple(f"{split}.jsonl" for split in SPLITS) + ("meta.json",)


def data_dir():
    return os.environ.get("TPV_DATA", "data_cache")


def task_dir(task, root=None):
    """root/<task>; every reader and writer of the cache comes here, so a root that is a file is one line."""
    root = root or data_dir()
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"{root}: not a folder; point --data-dir (or TPV_DATA) to a folder for the data cache")
    return os.path.join(root, task.name)


def is_prepared(folder):
    return any(os.path.exists(os.path.join(folder, name)) for name in CACHE_FILES)


def refuse_prepared(folder, force):
    """A cache, prepared or written by hand (maybe all the data its user has), is replaced only on request."""
    if not force and is_prepared(folder):
        raise files.FileError(f"{folder} already holds a prepared cache; pass --force to prepare it again")


def write_together(writes):
    """files.atomic_write of several (path, write) at once: each write runs inside the one before it, so every
    temporary file is written before the first rename, and a failed write (a full disk) renames none."""
    if not writes:
        return
    (path, write), rest = writes[0], writes[1:]

    def write_then_the_rest(tmp):
        write(tmp)
        write_together(rest)
    files.atomic_write(path, write_then_the_rest)


def write_cache(task, splits, source, skipped, root=None, force=False):
    """Writes every split and meta.json, all or nothing, and drops the splits the new source does not have."""
    folder = task_dir(task, root)
    refuse_prepared(folder, force)  # (again, when called by prepare: another one may have finished meanwhile)
    meta = {"task": task.name, "source": os.path.abspath(source), "prepared": time.strftime("%Y-%m-%d %H:%M:%S"),
            "examples": {s: len(r) for s, r in splits.items()}, "skipped_rows": skipped}
    # meta.json first: the outermost write is renamed last, so it marks a cache whose splits are all in place
    write_together([(os.path.join(folder, "meta.json"), files.text_writer([json.dumps(meta, indent=1)]))] +
                   [(os.path.join(folder, f"{split}.jsonl"),
                     files.text_writer(json.dumps(row, ensure_ascii=False) + "\n" for row in splits[split]))
                    for split in SPLITS if split in splits])
    for split in SPLITS:
        stale = os.path.join(folder, f"{split}.jsonl")
        if split not in splits and os.path.exists(stale):
            os.remove(stale)
    return folder


def label_problem(task, label):
    """Why `label` is not one of task's integer labels (or for STS-B a similarity score), or None."""
    # type(), not isinstance(): JSON's true and false are bools, which Python counts as the integers 1 and 0
    if task.labels and type(label) is int and 0 <= label < len(task.labels):
        return None
    if not task.labels and type(label) in (int, float) and 0 <= label <= 5:
        return None
    expected = f"0 to {len(task.labels) - 1}" if task.labels else "a score from 0 to 5"
    return f"label {label!r} is not one of {task.name}'s labels ({expected})"


def row_problem(task, row):
    """Why a canonical row cannot be used, or None."""
    if not isinstance(row, dict):
        return f"not a JSON object but {JSON_KINDS[type(row)]}"
    if task.label_field not in row:
        return f"no field {task.label_field!r}"
    return text_problem(row, task.template_fields, task.text_fields) or label_problem(task, row[task.label_field])


def parse_row(task, path, n, raw):
    """Line n of a cache file as a checked row; bytes that are not UTF-8 JSON (binary garbage, a line cut short)
    are an error naming the line, like a row of the wrong shape."""
    try:
        row = json.loads(raw.removeprefix(codecs.BOM_UTF8).decode("utf-8"))  # a BOM, as Windows editors write
        problem = row_problem(task, row)
    except ValueError as e:  # UnicodeDecodeError and json's JSONDecodeError are both ValueErrors
        problem = f"not a line of UTF-8 JSON ({e})"
    if problem:
        shown = excerpt(raw.decode("utf-8", "replace").rstrip("\r\n"))
        raise DataError(f"{path}:{n}: {problem}: {shown!r} (fix or delete the line; the format is in README, "
                        f"'Data')")
    return row


def read_split(task, split, root=None):
    """One canonical split, each row checked (a user may have written these files themselves); None if absent."""
    path = os.path.join(task_dir(task, root), f"{split}.jsonl")
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is reported with its number
            rows = [parse_row(task, path, n, raw) for n, raw in enumerate(f, 1) if raw.strip()]
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); make it readable, or prepare the task again") \
            from None
    if not rows:
        raise DataError(f"{path}: no examples; write one JSON object per line (README, 'Data'), or delete the file")
    return rows


def read_cache(task, root=None):
    """{split: rows} of the splits present; a clear error when the task was never prepared."""
    splits = {s: rows for s in SPLITS if (rows := read_split(task, s, root)) is not None}
    if not splits:
        raise DataError(f"no data for {task.name} in {task_dir(task, root)}; prepare it with: "
                        f"python tpv.py download-data {task.name}  (or: python tpv.py prepare {task.name} --from DIR)")
    return splits
