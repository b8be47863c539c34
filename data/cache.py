"""
The canonical cache: one folder per task holding train/validation/test JSONL with the Hugging Face field
names and integer labels (the splits of the original distribution), plus meta.json. Written atomically:
a failed `prepare` leaves an existing good cache untouched and no partial files behind.

    data_cache/sst2/train.jsonl        {"sentence": "hide new secretions ...", "label": 0, "idx": 0}
"""
import json
import os
import time

from .tasks import DataError

SPLITS = ("train", "validation", "test")


def data_dir():
    return os.environ.get("TPV_DATA", "data_cache")


def task_dir(task, root=None):
    return os.path.join(root or data_dir(), task.name)


def write_jsonl_atomic(path, rows):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return tmp


def write_cache(task, splits, source, skipped, root=None):
    """Writes every split to a temporary file first, then renames them all into place."""
    folder = task_dir(task, root)
    os.makedirs(folder, exist_ok=True)
    written = {}
    try:
        for split in SPLITS:
            if split in splits:
                written[split] = write_jsonl_atomic(os.path.join(folder, f"{split}.jsonl"), splits[split])
    except OSError as e:
        for tmp in written.values():
            os.remove(tmp)
        raise DataError(f"{folder}: cannot write the cache ({e}); the previous cache, if any, is unchanged") from None
    for split in SPLITS:  # all written: swap them in, and drop splits the new source does not have
        final = os.path.join(folder, f"{split}.jsonl")
        if split in written:
            os.replace(written[split], final)
        elif os.path.exists(final):
            os.remove(final)
    meta = {"task": task.name, "source": os.path.abspath(source), "prepared": time.strftime("%Y-%m-%d %H:%M:%S"),
            "examples": {s: len(r) for s, r in splits.items()}, "skipped_rows": skipped}
    with open(os.path.join(folder, "meta.json.tmp"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    os.replace(os.path.join(folder, "meta.json.tmp"), os.path.join(folder, "meta.json"))
    return folder


def read_split(task, split, root=None):
    """One canonical split, each row checked (a user may have written these files themselves)."""
    path = os.path.join(task_dir(task, root), f"{split}.jsonl")
    if not os.path.exists(path):
        return None
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                for field in task.text_fields:
                    if not isinstance(row[field], str) or not row[field].strip():
                        raise ValueError(f"field {field!r} must be non-empty text")
                label = row[task.label_field]
                ok = (isinstance(label, (int, float)) and 0 <= label <= 5) if not task.labels else \
                    (isinstance(label, int) and 0 <= label < len(task.labels))
                if not ok:
                    raise ValueError(f"label {label!r} is not one of {task.name}'s labels")
                task.source(row)  # every field of the template is there
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{n}: {e}: {line[:80]!r} (see README, 'Data')") from None
            rows.append(row)
    return rows


def read_cache(task, root=None):
    """{split: rows} of the splits present; a clear error when the task was never prepared."""
    splits = {s: rows for s in SPLITS if (rows := read_split(task, s, root)) is not None}
    if not splits:
        raise DataError(f"no data for {task.name} in {task_dir(task, root)}; prepare it with: "
                        f"python tpv.py download-data {task.name}  (or: python tpv.py prepare {task.name} --from DIR)")
    return splits
