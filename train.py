"""
Prompt tuning and evaluation: the paper's recipe (spec: paper §3, §5) as one flat loop.

    AdamW(lr 0.3, weight decay 1e-5) on the prompt only; linear schedule with 500 warm-up steps; gradient
    clipping at 1.0; batch 32; 10 epochs (TREC 50); validation loss every 100 steps; the prompt with the lowest
    validation loss is kept. Few-shot: 1,000 steps, batch 2 / 8 / 16, at most 250 validation examples.

Checkpoints hold everything a run needs to continue bit for bit (prompt, optimizer, schedule position, RNG
states, data position); data parallel runs (torchrun) split each global batch across ranks and sum the
prompt's gradient, so N processes compute what one process computes.
"""
import hashlib
import json
import math
import os
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
import metrics
import model_t5
import prompts

FEW_SHOT_STEPS, FEW_SHOT_VALIDATION = 1000, 250
RESUME_KEYS = ("task", "model", "origin", "prompt_len", "shots", "init", "max_steps", "epochs", "batch_size",
               "lr", "weight_decay", "warmup", "eval_every", "precision", "seed", "dropout")


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, mismatched resume); the message names where and what to do."""


# -----------------------------------------------------------------------------
# recipe pieces

def lr_at(step, base_lr, warmup, total):
    """transformers' get_linear_schedule_with_warmup: 0 -> base_lr over `warmup` steps, then linearly to 0.
    The first update uses step 0, so its learning rate is 0, as in the official runs."""
    if step < warmup:
        return base_lr * step / max(1, warmup)
    return base_lr * max(0.0, (total - step) / max(1, total - warmup))


def few_shot_batch_size(shots):
    return 2 if shots <= 25 else 8 if shots <= 250 else 16  # configs/cross_task_init/fewshot/*/N.toml


def autocast_for(precision, device):
    """-> (autocast context factory, whether to use a gradient scaler). Weights, prompt and optimizer stay fp32."""
    if precision == "fp32":
        return nullcontext, False
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype)), precision == "fp16"


def resolve_precision(precision, device):
    if precision == "auto":  # bf16 on GPUs that have it (T5 was trained in bf16), fp32 elsewhere
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError("--precision fp16 needs a CUDA device (use bf16 on the CPU)")
    return precision


def distributed():
    """(rank, world size, local rank) under torchrun; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def config_hash(model):
    return hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


# -----------------------------------------------------------------------------
# losses

def batch_loss(model, batch, prompt, autocast, device):
    """Summed cross-entropy over the batch's target tokens (labels are -100 on padding)."""
    batch = {k: v.to(device) for k, v in batch.items()}
    with autocast():
        logits = model(batch["input_ids"], model_t5.shift_right(batch["labels"]), batch["attention_mask"],
                       prompt=prompt)  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=-100,
                           reduction="sum")


@torch.no_grad()
def validation_loss(model, tokens, prompt, autocast, device, batch_size=64):
    """Mean cross-entropy per target token over a whole split, dropout off."""
    model.eval()
    total, count = 0.0, 0
    order = np.argsort(data.lengths(tokens), kind="stable")
    for start in range(0, len(order), batch_size):
        batch = data.collate(tokens, order[start:start + batch_size])
        total += batch_loss(model, batch, prompt, autocast, device).item()
        count += int((batch["labels"] != -100).sum())
    model.train()
    return total / max(count, 1)


# -----------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def predict(model, task, tokens, tokenizer, prompt, scoring="generate", batch_size=64, device="cpu",
            autocast=nullcontext, max_new_tokens=None, label=""):
    """Predicted label words (strings) for every example of a token set, with a progress line on long runs."""
    model.eval()
    candidates = [tokenizer.encode(w) for w in task.labels] if task.labels else None
    if scoring == "rank" and not candidates:
        raise TrainingError(f"--scoring rank needs label words; {task.name} is a regression task")
    if max_new_tokens is None:  # a generation longer than every label word cannot be one (README)
        max_new_tokens = max(len(c) for c in candidates) + 4 if candidates else 8
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


def evaluate(model, task, tokens, rows, tokenizer, prompt, **kw):
    """The paper's metrics of a prompt on a split; also returns the predictions."""
    predictions = predict(model, task, tokens, tokenizer, prompt, label=task.name, **kw)
    golds = [task.target(r) for r in rows]
    return metrics.task_metrics(task, predictions, golds), predictions


# -----------------------------------------------------------------------------
# checkpoints: everything needed to continue exactly

def save_checkpoint(path, tensors, state):
    from safetensors.torch import save_file
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise TrainingError(f"refusing to checkpoint non-finite {', '.join(bad)}")
    save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, path + ".tmp",
              metadata={"state": json.dumps(state)})
    os.replace(path + ".tmp", path)


def load_checkpoint(path):
    from safetensors.torch import safe_open
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["state"])


# -----------------------------------------------------------------------------
# the loop

def train(args, model, tokenizer, tasks, init, paths, log=print):
    """Tunes a prompt from `init` on `tasks` (several: the multi-task SPoT baseline); writes paths["prompt"],
    paths["json"] and, at every evaluation, paths["checkpoint"]. Returns the run record."""
    rank, world, _ = distributed()
    device = next(model.parameters()).device
    precision = resolve_precision(args.precision, device)
    autocast, use_scaler = autocast_for(precision, device)

    # data: train examples of every task in one pool; validation per task (the mean is the selection criterion)
    train_sets, val_sets = [], {}
    for task in tasks:
        splits = data.split_tokens(task, ["train", "validation"], tokenizer, args.data_dir, shots=args.shots,
                                   validation_limit=FEW_SHOT_VALIDATION if args.shots else None)
        train_sets.append(splits["train"][0])
        val_sets[task.name] = splits["validation"][0]
    train_tokens = data.concat(train_sets)
    train_lengths, target_lengths = data.lengths(train_tokens), np.diff(train_tokens["target_offsets"])
    n_examples = len(train_lengths)
    batches_per_epoch = math.ceil(n_examples / args.batch_size)
    total = args.max_steps or args.epochs * batches_per_epoch

    prompt = torch.nn.Parameter(init.clone().to(device))
    optimizer = torch.optim.AdamW([prompt], lr=args.lr, weight_decay=args.weight_decay)  # HF's betas and eps
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    step, epoch, next_batch = 0, 0, 0
    best_loss, best_step, best_prompt, history = math.inf, 0, prompt.detach().clone(), []
    comparable = {k: getattr(args, k) for k in RESUME_KEYS}

    if args.resume and os.path.exists(paths["checkpoint"]):
        tensors, state = load_checkpoint(paths["checkpoint"])
        changed = [k for k in RESUME_KEYS if state["args"].get(k) != comparable[k]]
        if changed:
            k = changed[0]
            raise TrainingError(f"--resume with different arguments: {k} was {state['args'].get(k)!r}, now "
                                f"{comparable[k]!r}; rerun with the original arguments, or drop --resume and "
                                f"pass --force to start over")
        with torch.no_grad():
            prompt.copy_(tensors["prompt"])
        best_prompt = tensors["best_prompt"].to(device)
        optimizer.load_state_dict({"state": {0: {k[4:]: v for k, v in tensors.items() if k.startswith("adam")}},
                                   "param_groups": state["param_groups"]})
        scaler.load_state_dict(state["scaler"]) if use_scaler else None
        torch.set_rng_state(tensors["rng_cpu"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng_cuda"], device)
        step, epoch, next_batch = state["step"], state["epoch"], state["next_batch"]
        best_loss, best_step, history = state["best_loss"], state["best_step"], state["history"]
        log(f"resumed {paths['checkpoint']} at step {step}")
    else:
        torch.manual_seed(args.seed + rank)  # dropout masks; the data order has its own seeded generator

    def checkpoint(rng_cpu):
        if rank != 0:
            return
        adam = {f"adam{k}": v for k, v in optimizer.state_dict()["state"].get(0, {}).items()}
        tensors = {"prompt": prompt, "init": init, "best_prompt": best_prompt, "rng_cpu": rng_cpu, **adam}
        if device.type == "cuda":
            tensors["rng_cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(paths["checkpoint"], tensors, {
            "args": comparable, "step": step, "epoch": epoch, "next_batch": next_batch, "best_loss": best_loss,
            "best_step": best_step, "history": history, "param_groups": optimizer.state_dict()["param_groups"],
            "scaler": scaler.state_dict() if use_scaler else {}})

    def validate():
        nonlocal best_loss, best_step, best_prompt
        losses = {name: validation_loss(model, tokens, prompt, autocast, device) for name, tokens in val_sets.items()}
        val = float(np.mean(list(losses.values())))  # the official eval_average_loss: the mean over tasks
        if val < best_loss:
            best_loss, best_step, best_prompt = val, step, prompt.detach().clone()
        history.append({"step": step, "validation_loss": val, "lr": lr_at(step - 1, args.lr, args.warmup, total),
                        **({f"validation_loss_{k}": v for k, v in losses.items()} if len(losses) > 1 else {})})
        log(f"  validation loss {val:.4f} (best {best_loss:.4f} at step {best_step})")
        checkpoint(torch.get_rng_state())

    log(f"training {'+'.join(t.name for t in tasks)}: {n_examples:,} examples, {total:,} steps "
        f"(batch {args.batch_size}{f' over {world} ranks' if world > 1 else ''}), {precision}, {device}")
    model.train()  # dropout on, as in the paper's runs (the weights stay frozen)
    started, tokens_seen, window_loss, window_steps = time.time(), 0, 0.0, 0
    start_step, rng_at_start = step, torch.get_rng_state()
    try:
        if step and (step % args.eval_every == 0 or step == total) and history[-1]["step"] != step:
            validate()  # interrupted between a step and its evaluation
        while step < total:
            batches = data.epoch_batches(train_lengths, args.batch_size, args.seed, epoch)
            while next_batch < len(batches) and step < total:
                idx = batches[next_batch]
                mine = idx[rank::world]  # this rank's share of the global batch
                n_targets = int(target_lengths[idx].sum())
                lr = lr_at(step, args.lr, args.warmup, total)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if len(mine):
                    # sum over this rank's tokens / tokens of the global batch: the ranks' gradients add up to
                    # exactly the gradient of the global batch's mean loss
                    loss = batch_loss(model, data.collate(train_tokens, mine), prompt, autocast, device) / n_targets
                    scaler.scale(loss).backward()
                    loss = loss.detach()
                else:
                    loss = torch.zeros((), device=device)
                if prompt.grad is None:
                    prompt.grad = torch.zeros_like(prompt)
                if world > 1:
                    dist.all_reduce(prompt.grad)
                    dist.all_reduce(loss)
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_([prompt], 1.0)
                if not torch.isfinite(loss) or (not use_scaler and not torch.isfinite(grad_norm)):
                    what = "loss" if not torch.isfinite(loss) else "gradient"
                    last = f"step {history[-1]['step']}: {paths['checkpoint']}" if history else "none"
                    raise TrainingError(f"non-finite {what} at step {step + 1} (epoch {epoch}, batch {next_batch}); "
                                        f"stopped, nothing non-finite was saved; last good checkpoint {last}; "
                                        f"try a lower --lr or --precision fp32")
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step, next_batch = step + 1, next_batch + 1
                rng_at_start = torch.get_rng_state()  # a checkpoint taken from here on continues exactly
                tokens_seen += int(train_lengths[idx].sum()) + len(idx) * init.shape[0] + n_targets
                window_loss, window_steps = window_loss + loss.item(), window_steps + 1

                if step % args.log_every == 0 or step == total:
                    elapsed = time.time() - started
                    eta = elapsed / (step - start_step) * (total - step)
                    log(f"step {step:>6}/{total} | loss {window_loss / window_steps:.4f} | lr {lr:.2e} | "
                        f"grad norm {grad_norm.item():.4f} | {tokens_seen / elapsed:,.0f} tok/s | "
                        f"ETA {eta / 60:.0f}m{eta % 60:02.0f}s")
                    window_loss, window_steps = 0.0, 0
                if step % args.eval_every == 0 or step == total:
                    validate()
            if next_batch >= len(batches):
                epoch, next_batch = epoch + 1, 0
    except KeyboardInterrupt:
        model.train()
        checkpoint(rng_at_start)  # an interrupted step is redone on --resume, with the same dropout masks
        raise TrainingError(f"interrupted at step {step}; saved {paths['checkpoint']}: continue with the same "
                            f"command and --resume") from None

    record = {"best_step": best_step, "best_validation_loss": best_loss, "steps": step, "history": history,
              "seconds": time.time() - started}
    if rank == 0:
        meta = {"task": ",".join(t.name for t in tasks), "model": args.model, "model_config": config_hash(model),
                "origin": str(args.origin), "init": args.init, "seed": str(args.seed), "steps": str(step),
                "best_step": str(best_step), "best_validation_loss": f"{best_loss:.6f}", "shots": str(args.shots),
                "prompt_len": str(init.shape[0])}
        prompts.save_prompt(paths["prompt"], best_prompt, init, meta)
    return record, best_prompt
