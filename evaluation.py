"""
Evaluation of a prompt on a task's split (paper §5): greedy generation of the label words (the paper), or
ranking the label words by log-probability (--scoring rank); then the paper's metrics (metrics.py). And the
validation loss that picks a run's best prompt.

    metrics = evaluate(model, tokenizer, task, (tokens, rows), prompt, **options(scoring, precision, device))
    [metrics, ...] = evaluate_all(model, tokenizer, task, (tokens, rows), prompts, **options(...))  # (R, n, d)
"""
import sys
import time
from contextlib import nullcontext

import torch

import data
import families
import metrics
from support import devices


class EvaluationError(ValueError):
    """An evaluation the user asked for cannot be done (no examples, rank scoring of a regression task)."""


def options(scoring, precision, device, max_new_tokens=None):
    """The keyword arguments of evaluate() for a --scoring and --precision on a device."""
    return {"scoring": scoring, "device": device, "autocast": devices.autocast_for(precision, device),
            "max_new_tokens": max_new_tokens}


def evaluate(model, tokenizer, task, split, prompt, **kw):
    """The paper's metrics of a prompt (n, d) on split = (token arrays, example rows) from data.split_tokens."""
    return evaluate_all(model, tokenizer, task, split, None if prompt is None else prompt[None], **kw)[0]


def evaluate_all(model, tokenizer, task, split, prompts, **kw):
    """The metrics of each of R prompts (R, n, d), evaluated together: every batch carries each example once per
    prompt (the runs of a pack), so R prompts cost about one pass of R times the rows."""
    tokens, rows = split
    if not rows:
        raise EvaluationError(f"{task.name}: the split to evaluate has no examples; prepare the task's full data "
                              f"(python tpv.py download-data {task.name})")
    targets = [task.target(r) for r in rows]
    return [metrics.task_metrics(task, predicted, targets)
            for predicted in predict(model, task, tokens, tokenizer, prompts, label=task.name, **kw)]


@torch.no_grad()
def predict(model, task, tokens, tokenizer, prompts, scoring="generate", device="cpu", autocast=nullcontext,
            max_new_tokens=None, label=""):
    """Predicted label words (strings) of every example for each of R prompts (R, n, d) (None: the model alone),
    with a progress line on long runs; the family predicts a batch (predict_words), devices.in_inference_batches
    cuts them."""
    device, family = torch.device(device), families.of(model)
    model.eval()
    if scoring == "rank" and not family.label_words(task):
        raise EvaluationError(f"--scoring rank needs label words; {task.name} is a regression task")
    R = 1 if prompts is None else prompts.shape[0]
    prompts = None if prompts is None else prompts.to(device)
    total = len(data.lengths(tokens))
    predictions, started, shown, done = [[None] * total for _ in range(R)], time.time(), time.time(), 0

    def predict_batch(idx):
        nonlocal shown, done
        with autocast():
            words = family.predict_words(model, tokenizer, task, tokens, idx, prompts, scoring, max_new_tokens)
        for r, per_prompt in enumerate(words):
            for i, word in zip(idx, per_prompt):
                predictions[r][i] = word
        done += len(idx)
        if time.time() - shown > 5 and done < total:
            rate = done / (time.time() - started)
            print(f"  eval {label}: {done:,}/{total:,} examples{f' x {R} prompts' if R > 1 else ''}, "
                  f"{rate:,.0f} ex/s, ETA {(total - done) / rate:,.0f}s", file=sys.stderr, flush=True)
            shown = time.time()
    rows = family.inference_rows(model, device, 0 if prompts is None else prompts.shape[1])
    devices.in_inference_batches(data.lengths(tokens), R, rows, predict_batch)
    return predictions


@torch.no_grad()
def validation_losses(model, tokens, prompts, autocast, make_batch):
    """(R,) mean cross-entropy per target token over a whole split for each of R prompts (R, n, d), dropout off,
    in devices.in_inference_batches."""
    family, device = families.of(model), prompts.device
    model.eval()
    totals, count = torch.zeros(prompts.shape[0], dtype=torch.float64), 0

    def add(idx):
        nonlocal totals, count
        batch = {k: v.to(device) for k, v in make_batch(tokens, idx).items()}
        with autocast():
            totals += family.run_losses(model, prompts, batch).double().cpu()
        count += int((batch["labels"] != -100).sum())
    rows = family.inference_rows(model, device, prompts.shape[1], validation=True)
    devices.in_inference_batches(data.lengths(tokens), prompts.shape[0], rows, add)
    model.train()
    return (totals / max(count, 1)).tolist()
