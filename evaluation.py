"""
Evaluation of a prompt on a task's split (paper §5): greedy generation of the label words (the paper), or
ranking the label words by log-probability (--scoring rank); then the paper's metrics (metrics.py).

    metrics = evaluate(model, tokenizer, task, (tokens, rows), prompt, **options(scoring, precision, device))
"""
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

import data
import metrics
import model_t5
import train


class EvaluationError(ValueError):
    """An evaluation the user asked for cannot be done (no examples, rank scoring of a regression task)."""


def options(scoring, precision, device, max_new_tokens=None):
    """The keyword arguments of evaluate() for a --scoring and --precision on a device."""
    autocast, _ = train.autocast_for(train.resolve_precision(precision, device), device)
    return {"scoring": scoring, "device": device, "autocast": autocast, "max_new_tokens": max_new_tokens}


def evaluate(model, tokenizer, task, split, prompt, **kw):
    """The paper's metrics of a prompt on split = (token arrays, example rows) from data.split_tokens."""
    tokens, rows = split
    if not rows:
        raise EvaluationError(f"{task.name}: the split to evaluate has no examples; prepare the task's full data "
                              f"(python tpv.py download-data {task.name})")
    predictions = predict(model, task, tokens, tokenizer, prompt, label=task.name, **kw)
    return metrics.task_metrics(task, predictions, [task.target(r) for r in rows])


@torch.no_grad()
def predict(model, task, tokens, tokenizer, prompt, scoring="generate", batch_size=64, device="cpu",
            autocast=nullcontext, max_new_tokens=None, label=""):
    """Predicted label words (strings) for every example of a token set, with a progress line on long runs."""
    model.eval()
    candidates = [tokenizer.encode(w) for w in task.labels] if task.labels else None
    if scoring == "rank" and not candidates:
        raise EvaluationError(f"--scoring rank needs label words; {task.name} is a regression task")
    if max_new_tokens is None:  # a generation longer than every label word cannot be one (README)
        max_new_tokens = max(len(c) for c in candidates) + 4 if candidates else 8
    prompt = prompt.to(device) if prompt is not None else None
    order = np.argsort(data.lengths(tokens), kind="stable")  # similar lengths together: less padding
    predictions, started, shown = [None] * len(order), time.time(), time.time()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in data.collate(tokens, idx).items()}
        with autocast():
            if scoring == "rank":
                scores = model_t5.score_candidates(model, batch["input_ids"], batch["attention_mask"], prompt,
                                                   candidates)  # (B, C)
                words = [task.labels[j] for j in scores.argmax(-1).tolist()]
            else:
                out = model_t5.generate_greedy(model, batch["input_ids"], batch["attention_mask"], prompt,
                                               max_new_tokens)
                words = [tokenizer.decode(ids).strip() for ids in out.tolist()]
        for i, word in zip(idx, words):
            predictions[i] = word
        done = start + len(idx)
        if time.time() - shown > 5 and done < len(order):
            rate = done / (time.time() - started)
            print(f"  eval {label}: {done:,}/{len(order):,} examples, {rate:,.0f} ex/s, "
                  f"ETA {(len(order) - done) / rate:,.0f}s", file=sys.stderr, flush=True)
            shown = time.time()
    return predictions
