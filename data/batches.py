"""
Tokenisation (cached on disk per task, split and tokenizer) and length-bucketed, dynamically padded batches.

The official code pads every input to 256 tokens. We shuffle each epoch, sort by length inside large chunks,
and pad each batch only to its longest member: the same examples, far fewer padding tokens.
"""
import hashlib
import os
import zipfile

import numpy as np
import torch

import files

MAX_SOURCE = 256  # the paper's max_source_length


def tokenizer_key(tokenizer):
    with open(tokenizer.model_file, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def tokenize(task, rows, tokenizer, max_source=MAX_SOURCE):
    """rows -> flat int32 arrays with offsets: sources truncated to max_source (EOS kept last, as HF truncates
    T5 inputs), targets the label words; and how many sources were truncated."""
    sources, targets, truncated = [], [], 0
    for row in rows:
        ids = tokenizer.encode(task.source(row))
        if len(ids) > max_source:
            ids, truncated = ids[:max_source - 1] + [tokenizer.eos_id], truncated + 1
        sources.append(ids)
        targets.append(tokenizer.encode(task.target(row)))
    flat = lambda seqs: (np.array([t for s in seqs for t in s], dtype=np.int32),
                         np.cumsum([0] + [len(s) for s in seqs], dtype=np.int64))
    (src, src_off), (tgt, tgt_off) = flat(sources), flat(targets)
    return {"source": src, "source_offsets": src_off, "target": tgt, "target_offsets": tgt_off,
            "truncated": np.int64(truncated)}


TOKEN_ARRAYS = {"source", "source_offsets", "target", "target_offsets", "truncated"}


def load_tokens(path, stamp, n_rows):
    """The token arrays stored at path when they are those of these rows, else None: a missing, stale,
    truncated or corrupt cache is only a cache, rebuilt rather than reported."""
    try:
        with np.load(path) as cached:
            arrays = {k: cached[k] for k in cached.files}
    # what np.load raises for: no file, zero bytes, a zip cut short or with a bad CRC, pickles, a bare .npy
    except (OSError, EOFError, ValueError, TypeError, zipfile.BadZipFile):
        return None
    whole = set(arrays) == TOKEN_ARRAYS | {"stamp"} and all(  # one offset per row, the last one at the end
        arrays[f"{k}_offsets"].shape == (n_rows + 1,) and arrays[f"{k}_offsets"][-1] == arrays[k].size
        for k in ("source", "target"))
    return {k: arrays[k] for k in TOKEN_ARRAYS} if whole and np.array_equal(arrays["stamp"], stamp) else None


def cached_tokens(task, split, rows, tokenizer, folder, max_source=MAX_SOURCE):
    """tokenize(), stored as folder/tokens/<split>-<tokenizer>-<max>.npz and rebuilt when the tokenizer or the
    split's JSONL changes, or the stored file is damaged."""
    jsonl = os.path.join(folder, f"{split}.jsonl")
    stamp = np.array([os.path.getsize(jsonl), os.stat(jsonl).st_mtime_ns], dtype=np.int64) \
        if os.path.exists(jsonl) else np.array([len(rows), 0], dtype=np.int64)
    path = os.path.join(folder, "tokens", f"{split}-{tokenizer_key(tokenizer)}-{max_source}.npz")
    tokens = load_tokens(path, stamp, len(rows))
    if tokens is None:
        tokens = tokenize(task, rows, tokenizer, max_source)

        def write(tmp):
            with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a temporary file's name
                np.savez(f, stamp=stamp, **tokens)
        files.atomic_write(path, write)
    return tokens


def select(tokens, idx):
    """The token arrays of a subset (in the order of idx)."""
    parts = {}
    for key in ("source", "target"):
        flat, offsets = tokens[key], tokens[f"{key}_offsets"]
        pieces = [flat[offsets[i]:offsets[i + 1]] for i in idx]
        parts[key] = np.concatenate(pieces) if pieces else flat[:0]
        parts[f"{key}_offsets"] = np.cumsum([0] + [len(p) for p in pieces], dtype=np.int64)
    return parts


def concat(token_sets):
    """Several token sets (e.g. two tasks, for multi-task training) as one."""
    out = {}
    for key in ("source", "target"):
        out[key] = np.concatenate([t[key] for t in token_sets])
        sizes = np.concatenate([np.diff(t[f"{key}_offsets"]) for t in token_sets])
        out[f"{key}_offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return out


def lengths(tokens):
    return np.diff(tokens["source_offsets"])


def epoch_batches(source_lengths, batch_size, seed, epoch, chunk_batches=100):
    """The batches of one epoch, as index arrays; a pure function of (seed, epoch), so a run resumed at batch k
    of an epoch sees the same batches from k on. Shuffle; sort by length inside chunks of chunk_batches
    batches (similar lengths share a batch); cut; shuffle the batch order."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(source_lengths))
    chunk = batch_size * chunk_batches
    batches = []
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        idx = idx[np.argsort(source_lengths[idx], kind="stable")]
        batches += [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(tokens, idx, pad_id=0):
    """Index array -> {input_ids, attention_mask (B, S), labels (B, T) with -100 on padding}, padded to the
    longest member of the batch."""
    def pad(flat, offsets, value):
        seqs = [flat[offsets[i]:offsets[i + 1]] for i in idx]
        out = np.full((len(seqs), max(len(s) for s in seqs)), value, dtype=np.int64)
        mask = np.zeros(out.shape, dtype=np.int64)
        for row, s in enumerate(seqs):
            out[row, :len(s)], mask[row, :len(s)] = s, 1
        return torch.from_numpy(out), torch.from_numpy(mask)
    input_ids, attention_mask = pad(tokens["source"], tokens["source_offsets"], pad_id)
    labels, _ = pad(tokens["target"], tokens["target_offsets"], -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def padding_stats(source_lengths, batches):
    """(real tokens, tokens in our padded batches, tokens when every input is padded to 256)."""
    real = int(source_lengths.sum())
    ours = int(sum(len(b) * source_lengths[b].max() for b in batches))
    return real, ours, len(source_lengths) * MAX_SOURCE
