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

from support import files

from . import instruct

from .tasks import DataError

MAX_SOURCE = 256  # the paper's max_source_length


def tokenizer_key(tokenizer):
    with open(tokenizer.model_file, "rb") as f:
        key = hashlib.sha256(f.read())
    # decoder-only: the chat format shapes the tokens too
    key.update((getattr(tokenizer, "chat_format", None) or "").encode())
    return key.hexdigest()[:12]


def tokenize(task, rows, tokenizer, max_source=MAX_SOURCE):
    """rows -> flat int32 arrays with offsets, and how many examples are cut: each example as the tokenizer's
    encode_example makes it (T5: the source cut to max_source, the target; a chat model: the chat prefix and the
    answer, whole, which collate_causal cuts to instruct.MAX_LENGTH)."""
    sources, targets, truncated = [], [], 0
    for row in rows:
        ids, target, cut = tokenizer.encode_example(task, row, max_source)
        sources.append(ids)
        targets.append(target)
        truncated += cut
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


def sequence(tokens, key, i):
    """Example i's "source" or "target" ids, as a list."""
    offsets = tokens[f"{key}_offsets"]
    return tokens[key][offsets[i]:offsets[i + 1]].tolist()


def shared_start(rows, labels=None):
    """How many leading tokens every row has in common (and the same label, where rows have labels), leaving each
    row at least one token of its own: the shared prefix a decoder-only model computes once per prompt."""
    shortest = min(len(r) for r in rows)
    same = 0
    while same < shortest - 1 and all(r[same] == rows[0][same] for r in rows) and (
            labels is None or all(lab[same] == labels[0][same] for lab in labels)):
        same += 1
    return same


def collate_causal(tokens, idx, pad_id, loss, tail):
    """Decoder-only training batch: each chat prefix and answer cut to fit (instruct.truncate), joined, padded on the
    right -> {input_ids, attention_mask (B, L), labels (B, L), shared_ids (P,)}: labels are the ids themselves (--loss
    full: the whole chat text, as the official SFTTrainer's language-modelling collator) or only the answer's (--loss
    answer), -100 elsewhere and on padding; shared_ids the first P tokens, the same in every row and with the same
    labels (shared_start)."""
    rows, labels = [], []
    for i in idx:
        prefix, answer = instruct.truncate(sequence(tokens, "source", i), sequence(tokens, "target", i), loss, tail)
        rows.append(prefix + answer)
        labels.append(prefix + answer if loss == "full" else [-100] * len(prefix) + answer)
    width = max(len(r) for r in rows)
    pad = lambda seqs, value: torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.int64)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.int64)
    shared = rows[0][:shared_start(rows, labels)]
    return {"input_ids": pad(rows, pad_id), "attention_mask": mask, "labels": pad(labels, -100),
            "shared_ids": torch.tensor(shared, dtype=torch.int64)}


def collate_prefixes(tokens, idx, pad_id):
    """Decoder-only evaluation batch: the chat prefixes (whole, as the official test prompts) -> {input_ids,
    attention_mask (B, S), shared_ids (P,)}: the P tokens every prefix starts with first, then each row's own
    tokens padded on the left, so that generation continues every row at the same place. The pads sit between the
    two, masked: each row's tokens keep the positions they have alone (model_llama.positions_from)."""
    rows = [sequence(tokens, "source", i) for i in idx]
    shared = shared_start(rows)
    width = max(len(r) for r in rows)
    ids = torch.tensor([r[:shared] + [pad_id] * (width - len(r)) + r[shared:] for r in rows], dtype=torch.int64)
    mask = torch.tensor([[1] * shared + [0] * (width - len(r)) + [1] * (len(r) - shared) for r in rows],
                        dtype=torch.int64)
    return {"input_ids": ids, "attention_mask": mask, "shared_ids": torch.tensor(rows[0][:shared], dtype=torch.int64)}


def padding_stats(source_lengths, batches):
    """(real tokens, tokens in our padded batches, tokens when every input is padded to 256)."""
    real = int(source_lengths.sum())
    ours = int(sum(len(b) * source_lengths[b].max() for b in batches))
    return real, ours, len(source_lengths) * MAX_SOURCE
