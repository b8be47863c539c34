"""
tpv's NLU data: the paper's 17 tasks, from their original files to length-bucketed batches.

    from data import get_task, load_task, split_tokens, epoch_batches, lengths, collate
    task = get_task("mnli")
    splits = load_task(task)                       # {"train", "validation", "test"}: the paper's split rule
    tokens, rows = split_tokens(task, ["train"], tokenizer)["train"]
    for idx in epoch_batches(lengths(tokens), 32, seed=42, epoch=0):
        batch = collate(tokens, idx)               # input_ids, attention_mask, labels (-100 on padding)

Layout: tasks.py (registry), readers.py (original files), cache.py (canonical JSONL), splits.py (split rules,
few-shot), batches.py (tokenisation cache, batches), download.py (original distributions),
instruct.py (the paper's instruct format: an example as chat tokens, for decoder-only models).
"""
from collections import Counter

from .batches import (MAX_SOURCE, cached_tokens, collate, collate_causal, collate_prefixes, concat, epoch_batches,
                      lengths, padding_stats, select, shared_start, tokenize)
from .cache import SPLITS, data_dir, is_prepared, read_cache, refuse_prepared, task_dir, write_cache
from .download import download_task
from .readers import read_task
from .splits import few_shot, few_shot_indices, paper_splits, split_indices, stratified_take
from .tasks import TASKS, DataError, Task, get_task


def load_task(task, root=None):
    """The paper's {train, validation, test} of a prepared task."""
    return paper_splits(task, read_cache(task, root))


def encode(task, split, rows, tokenizer, root=None, max_source=MAX_SOURCE):
    """Token arrays of one canonical split, cached beside the task's JSONL."""
    return cached_tokens(task, split, rows, tokenizer, task_dir(task, root), max_source)


def split_tokens(task, splits, tokenizer, root=None, shots=0, validation_limit=None):
    """{split: (token arrays, example rows)} of the paper's splits named in `splits`, reading the prepared cache
    once and reusing the cached tokens of the original splits; shots > 0 draws the few-shot subset of train
    (0: all of train), validation_limit keeps the first validation examples only. A split left empty (the split
    rule applied to a tiny prepared split) is an error here, before anything trains or evaluates on it."""
    canonical = read_cache(task, root)
    indices, tokens, out = split_indices(task, canonical), {}, {}
    for split in splits:
        name, idx = indices[split]
        if split == "train" and shots:
            idx = idx[few_shot_indices(task, [canonical[name][i] for i in idx], shots)]
        if split == "validation" and validation_limit is not None:
            idx = idx[:validation_limit]
        if not len(idx):
            raise DataError(f"{task.name}: the {split} split has no examples (the paper's split rule leaves none "
                            f"of the {len(canonical[name]):,} in the prepared {name} split); prepare the full "
                            f"data: python tpv.py download-data {task.name}")
        if name not in tokens:  # the paper's train and validation both come from the original train, often
            tokens[name] = encode(task, name, canonical[name], tokenizer, root)
        out[split] = select(tokens[name], idx), [canonical[name][i] for i in idx]
    return out


def prepare(task, source, root=None, skip_bad_rows=False, tokenizer=None, force=False):
    """Original files under `source` -> the canonical cache; returns a printable report. An existing cache is
    replaced only with force; every input is checked before anything is written."""
    refuse_prepared(task_dir(task, root), force)  # now, not after reading originals that may take minutes
    splits, skipped = read_task(task, source, skip_bad_rows)
    folder = write_cache(task, splits, source, skipped, root, force)
    lines = [f"{task.name}: wrote {folder}"]
    for split in SPLITS:
        if split not in splits:
            needed = split in ("train", task.heldout)
            lines.append(f"  {split:<10} {'MISSING: the paper split rule needs it' if needed else '(not used)'}")
            continue
        rows = splits[split]
        counts = Counter(task.target(r) if task.labels else "score" for r in rows)
        shown = ", ".join(f"{label} {n:,}" for label, n in sorted(counts.items()))
        long = ""
        if tokenizer is not None:  # tokenise now (cached for training) and report what truncation will cut
            truncated = int(encode(task, split, rows, tokenizer, root)["truncated"])
            limit = tokenizer.example_limit  # T5: 256 source tokens; a chat model: 512 in all
            long = f"; longer than {limit} tokens (truncated): {truncated:,} ({truncated / len(rows):.1%})"
        lines.append(f"  {split:<10} {len(rows):>9,} examples: {shown}{long}")
    if skipped:
        lines.append("  skipped rows: " + ", ".join(f"{n:,} {reason}" for reason, n in skipped.items()))
    return "\n".join(lines)


__all__ = ["TASKS", "DataError", "Task", "get_task", "load_task", "split_tokens", "prepare", "read_task", "read_cache",
           "is_prepared", "write_cache", "paper_splits", "split_indices", "few_shot", "few_shot_indices", "stratified_take",
           "encode", "tokenize", "cached_tokens", "select", "concat", "epoch_batches", "collate", "collate_causal",
           "collate_prefixes", "shared_start", "lengths",
           "padding_stats", "download_task", "data_dir", "MAX_SOURCE"]
