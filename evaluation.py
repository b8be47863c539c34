"""
Evaluation of a prompt on a task's split (paper §5): greedy generation of the label words (the paper), or
ranking the label words by log-probability (--scoring rank); then the paper's metrics (metrics.py).

    metrics = evaluate(model, tokenizer, task, (tokens, rows), prompt, **options(scoring, precision, device))
    [metrics, ...] = evaluate_all(model, tokenizer, task, (tokens, rows), prompts, **options(...))  # (R, n, d)
"""
import sys
import time
from contextlib import nullcontext

import torch

import data
from data import instruct
import metrics
import model_llama
import model_t5
import train


class EvaluationError(ValueError):
    """An evaluation the user asked for cannot be done (no examples, rank scoring of a regression task)."""


def options(scoring, precision, device, max_new_tokens=None):
    """The keyword arguments of evaluate() for a --scoring and --precision on a device."""
    autocast, _ = train.autocast_for(train.resolve_precision(precision, device), device)
    return {"scoring": scoring, "device": device, "autocast": autocast, "max_new_tokens": max_new_tokens}


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
    with a progress line on long runs; batched by train.in_inference_batches (each example repeated for the R
    prompts)."""
    device = torch.device(device)
    model.eval()
    if model.family == "t5":
        candidates = [tokenizer.encode(w) for w in task.labels] if task.labels else None
        family, make_batch = model_t5, data.collate
    else:  # decoder-only: the answers as the chat writes them after the prefix, e.g. "not entailment<|eot_id|>"
        candidates = [instruct.answer_ids(tokenizer, tokenizer.chat_format, w) for w in task.words]
        family = model_llama
        make_batch = lambda tokens, idx: data.collate_prefixes(tokens, idx, model_llama.pad_id(model.config))
    if scoring == "rank" and not candidates:
        raise EvaluationError(f"--scoring rank needs label words; {task.name} is a regression task")
    if max_new_tokens is None:  # T5: a generation longer than every label word cannot be one (README)
        max_new_tokens = (instruct.MAX_NEW_TOKENS if model.family != "t5" else
                          max(len(c) for c in candidates) + 4 if candidates else 8)
    R = 1 if prompts is None else prompts.shape[0]
    prompts = None if prompts is None else prompts.to(device)
    total = len(data.lengths(tokens))
    predictions, started, shown, done = [[None] * total for _ in range(R)], time.time(), time.time(), 0

    def predict_batch(idx):
        nonlocal shown, done
        batch = {k: v.to(device) for k, v in make_batch(tokens, idx).items()}
        ids, mask = batch["input_ids"].repeat(R, 1), batch["attention_mask"].repeat(R, 1)  # (R*B, S), run-major
        prompt_rows = None if prompts is None else prompts.repeat_interleave(len(idx), dim=0)  # (R*B, n, d)
        with autocast():
            if scoring == "rank":
                scores = family.score_candidates(model, ids, mask, prompt_rows, candidates)  # (R*B, C)
                words = [(task.labels or task.words)[j] for j in scores.argmax(-1).tolist()]
            else:
                out = family.generate_greedy(model, ids, mask, prompt_rows, max_new_tokens)
                words = [tokenizer.decode(ids).strip() for ids in out.tolist()]
                if model.family != "t5":
                    words = [instruct.label_of(task, w) for w in words]
        for k, word in enumerate(words):
            predictions[k // len(idx)][idx[k % len(idx)]] = word
        done += len(idx)
        if time.time() - shown > 5 and done < total:
            rate = done / (time.time() - started)
            print(f"  eval {label}: {done:,}/{total:,} examples{f' x {R} prompts' if R > 1 else ''}, "
                  f"{rate:,.0f} ex/s, ETA {(total - done) / rate:,.0f}s", file=sys.stderr, flush=True)
            shown = time.time()
    rows = train.inference_rows(model, device, 0 if prompts is None else prompts.shape[1])
    train.in_inference_batches(tokens, R, rows, predict_batch)
    return predictions
