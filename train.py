"""
Prompt tuning: the paper's recipe as one dataclass, and one flat loop over it.

The recipe (paper §3) lives in TrainConfig and nowhere else; `recipe()` fills the numbers that depend on the
task and the shot count. `train()` reads top to bottom: data, state, then the loop with its step, its log line
and its validation marked as sections. Checkpoints hold everything a run needs to continue bit for bit (prompt,
optimizer, schedule position, RNG states, data position); data parallel runs (torchrun) split each global batch
across ranks and sum the prompt's gradient, so N processes compute what one process computes.
"""
import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import data
import files
import model_t5


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, mismatched resume); the message names where and what to do."""


# -----------------------------------------------------------------------------
# the recipe

@dataclass
class TrainConfig:
    # what is trained
    task: str = "mnli"  # a task, or a comma list: the multi-task SPoT baseline (paper §3)
    model: str = "t5-base"  # paper §2: the original T5 v1.0 t5-base
    origin: int = 0  # origin_0 .. origin_9 (paper §3: 10 random inits in v1)
    init: str = "origin"  # where tuning starts: origin, random, vocab, text:..., a prompt file, or task[+task]
    prompt_len: int = 50  # paper §2: 50 encoder vectors (PEFT's 50 decoder vectors are never used at inference)
    shots: int | None = None  # few-shot: N training examples (paper §3); 0: no training, the init is the result
    # paper §3, configs/prompt_tuning/single-task/prompt_tuning.toml
    lr: float = 0.3  # AdamW (transformers' default betas and eps)
    weight_decay: float = 1e-5
    warmup: int = 500  # linear schedule: 0 -> lr over 500 steps, then linearly to 0
    clip_norm: float = 1.0  # transformers Trainer's max_grad_norm
    batch_size: int | None = None  # 32; few-shot: 2 / 8 / 16 (recipe())
    epochs: int | None = None  # 10; TREC 50 (recipe())
    max_steps: int | None = None  # None: epochs x batches; few-shot: 1000 (recipe())
    eval_every: int = 100  # validation loss every 100 steps; the prompt with the lowest one is kept
    validation_limit: int | None = None  # few-shot: the first 250 validation examples (max_valid_samples)
    seed: int = 42  # transformers' default seed; the data seed is data.splits.SEED
    # how it runs
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on the CPU (the paper ran fp32)
    dropout: float | None = None  # None: the model's dropout_rate (0.1 for T5), as the paper trained
    data_dir: str = "data_cache"
    log_every: int = 10


FEW_SHOT_STEPS, FEW_SHOT_VALIDATION = 1000, 250  # configs/cross_task_init/fewshot/*/N.toml
NOT_COMPARED_ON_RESUME = ("log_every",)  # the only field that does not change the numbers


def few_shot_batch_size(shots):
    return 2 if shots <= 25 else 8 if shots <= 250 else 16  # configs/cross_task_init/fewshot/*/N.toml


def recipe(task, shots=None, **overrides):
    """The paper's TrainConfig for a task and shot count; `overrides` (the user's flags) win over every default.
    TREC trains 50 epochs because it underfits (prompt_tuning_trec.toml); a multi-task run that includes TREC
    keeps 10, as the official multi-task configs (paper §3)."""
    epochs = 50 if task == "trec" else 10
    if shots:
        defaults = {"max_steps": FEW_SHOT_STEPS, "batch_size": few_shot_batch_size(shots),
                    "validation_limit": FEW_SHOT_VALIDATION}
    else:
        defaults = {"batch_size": 32}
    return TrainConfig(**{"task": task, "shots": shots, "epochs": epochs, **defaults, **overrides})


def lr_at(step, base_lr, warmup, total):
    """transformers' get_linear_schedule_with_warmup: 0 -> base_lr over `warmup` steps, then linearly to 0.
    The first update uses step 0, so its learning rate is 0, as in the official runs."""
    if step < warmup:
        return base_lr * step / max(1, warmup)
    return base_lr * max(0.0, (total - step) / max(1, total - warmup))


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


# -----------------------------------------------------------------------------
# losses

def summed_loss(logits, labels):
    """Summed cross-entropy over the target tokens (labels are -100 on padding), in fp32 under any autocast."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")


@torch.no_grad()
def validation_loss(model, tokens, prompt, autocast, device, batch_size=64):
    """Mean cross-entropy per target token over a whole split, dropout off."""
    model.eval()
    total, count = 0.0, 0
    order = np.argsort(data.lengths(tokens), kind="stable")
    for start in range(0, len(order), batch_size):
        batch = {k: v.to(device) for k, v in data.collate(tokens, order[start:start + batch_size]).items()}
        labels = batch["labels"]
        with autocast():
            total += summed_loss(model(batch["input_ids"], model_t5.shift_right(labels), batch["attention_mask"],
                                       prompt=prompt), labels).item()
        count += int((labels != -100).sum())
    model.train()
    return total / max(count, 1)


# -----------------------------------------------------------------------------
# the state of a run: saves and restores itself, so that a resumed run continues bit for bit

@dataclass
class TrainState:
    prompt: torch.nn.Parameter  # (n, d), the only trained tensor
    init: torch.Tensor  # (n, d), where tuning started
    optimizer: torch.optim.AdamW
    scaler: torch.amp.GradScaler
    step: int = 0
    epoch: int = 0
    next_batch: int = 0  # position inside the epoch's batches
    best_loss: float = math.inf
    best_step: int = 0
    best_prompt: torch.Tensor = None
    history: list = field(default_factory=list)

    @classmethod
    def new(cls, config, init, device, use_scaler):
        prompt = torch.nn.Parameter(init.clone().to(device))
        return cls(prompt, init, torch.optim.AdamW([prompt], lr=config.lr, weight_decay=config.weight_decay),
                   torch.amp.GradScaler(device.type, enabled=use_scaler), best_prompt=prompt.detach().clone())

    def record(self, **extra):
        """What the run's JSON record keeps of the state."""
        return {"best_step": self.best_step, "best_validation_loss": self.best_loss, "steps": self.step,
                "history": self.history, **extra}

    def save(self, path, config, rng_cpu):
        """Everything needed to continue; rng_cpu is the generator state at the start of the next step."""
        tensors = {"prompt": self.prompt, "init": self.init, "best_prompt": self.best_prompt, "rng_cpu": rng_cpu,
                   **{f"adam{k}": v for k, v in self.optimizer.state_dict()["state"].get(0, {}).items()}}
        if self.prompt.device.type == "cuda":
            tensors["rng_cuda"] = torch.cuda.get_rng_state(self.prompt.device)
        bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise TrainingError(f"refusing to checkpoint non-finite {', '.join(bad)}")
        state = {"args": comparable(config), "step": self.step, "epoch": self.epoch, "next_batch": self.next_batch,
                 "best_loss": self.best_loss, "best_step": self.best_step, "history": self.history,
                 "param_groups": self.optimizer.state_dict()["param_groups"],
                 "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {}}
        tensors = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
        files.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"state": json.dumps(state)}))

    def restore(self, path, config):
        tensors, state = load_checkpoint(path)
        now, then = comparable(config), state["args"] | {"model": os.path.normpath(state["args"].get("model", ""))}
        changed = [k for k in now if k in then and then[k] != now[k]]
        if changed:
            k = changed[0]
            raise TrainingError(f"--resume with different arguments: {k} was {then[k]!r}, now {now[k]!r}; "
                                f"rerun with the original arguments, or drop --resume and pass --force to start "
                                f"over")
        device = self.prompt.device
        with torch.no_grad():
            self.prompt.copy_(tensors["prompt"])
        self.best_prompt = tensors["best_prompt"].to(device)
        self.optimizer.load_state_dict({"state": {0: {k[4:]: v for k, v in tensors.items() if k.startswith("adam")}},
                                        "param_groups": state["param_groups"]})
        if self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(tensors["rng_cpu"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng_cuda"], device)
        for key in ("step", "epoch", "next_batch", "best_loss", "best_step", "history"):
            setattr(self, key, state[key])


def comparable(config):
    """The config as a checkpoint records it: resuming with other values would not continue the same run."""
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_COMPARED_ON_RESUME}
    return values | {"data_dir": os.path.abspath(config.data_dir), "model": os.path.normpath(config.model)}


def load_checkpoint(path):
    """-> (tensors, state); a truncated or foreign file is one clear line."""
    try:
        with safe_open(path, "pt") as f:
            tensors, state = {k: f.get_tensor(k) for k in f.keys()}, json.loads((f.metadata() or {})["state"])
        if not {"prompt", "best_prompt", "rng_cpu"} <= set(tensors):
            raise KeyError("tensors")
        return tensors, state
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        raise TrainingError(f"{path}: not a readable tpv checkpoint ({type(e).__name__}: {e}); start the run over "
                            f"with --force (without --resume)") from None


# -----------------------------------------------------------------------------
# the loop

def train(config, model, tokenizer, tasks, init, checkpoint, resume=False, log=print):
    """Tunes a prompt from `init` on `tasks` (several: the multi-task SPoT baseline), checkpointing to
    `checkpoint` at every validation. Returns (run record, best prompt); the caller writes the files."""
    if config.shots == 0:  # zero-shot: the initial prompt is the result
        return {"steps": 0, "history": []}, init
    rank, world, _ = distributed()
    device = next(model.parameters()).device
    precision = resolve_precision(config.precision, device)
    autocast, use_scaler = autocast_for(precision, device)

    # --- state: the prompt is the only trained tensor; one AdamW over it
    state = TrainState.new(config, init, device, use_scaler)
    prompt = state.prompt
    if resume and os.path.exists(checkpoint):
        state.restore(checkpoint, config)
        log(f"resumed {checkpoint} at step {state.step}")
    else:
        torch.manual_seed(config.seed + rank)  # dropout masks; the data order has its own seeded generator

    # --- data: the train examples of every task in one pool; validation per task (their mean selects)
    train_tokens, validation_sets = training_data(config, tasks, tokenizer)
    lengths, target_lengths = data.lengths(train_tokens), np.diff(train_tokens["target_offsets"])
    total = config.max_steps or config.epochs * math.ceil(len(lengths) / config.batch_size)

    log(f"training {'+'.join(t.name for t in tasks)}: {len(lengths):,} examples, {total:,} steps "
        f"(batch {config.batch_size}{f' over {world} ranks' if world > 1 else ''}), {precision}, {device}")
    model.train()  # dropout on, as in the paper's runs (the weights stay frozen)
    started, start_step, tokens_seen, window = time.time(), state.step, 0, []
    rng_at_step = torch.get_rng_state()  # a checkpoint taken from here on continues exactly
    try:
        if state.step and due(state.step, config.eval_every, total) and (
                not state.history or state.history[-1]["step"] != state.step):
            validate(state, model, validation_sets, autocast, device, config, total, log)  # interrupted before it
            save_on_rank_0(state, checkpoint, config, rng_at_step, rank)
        while state.step < total:
            batches = data.epoch_batches(lengths, config.batch_size, config.seed, state.epoch)
            while state.next_batch < len(batches) and state.step < total:
                # --- one step: this rank's share of the global batch, the loss per target token of the batch
                idx = batches[state.next_batch]
                mine = idx[rank::world]
                n_targets = int(target_lengths[idx].sum())
                lr = lr_at(state.step, config.lr, config.warmup, total)
                state.optimizer.param_groups[0]["lr"] = lr  # the prompt is the one parameter group
                loss = torch.zeros((), device=device)  # a rank without examples in this batch adds nothing
                if len(mine):
                    batch = {k: v.to(device) for k, v in data.collate(train_tokens, mine).items()}
                    with autocast():  # the frozen model; T5.encode prepends the prompt to every input's embeddings
                        logits = model(batch["input_ids"], model_t5.shift_right(batch["labels"]),
                                       batch["attention_mask"], prompt=prompt)  # (B, T, V)
                    # this rank's summed loss / the global batch's target tokens: the ranks' gradients add up to
                    # exactly the gradient of the global batch's mean loss
                    loss = summed_loss(logits, batch["labels"]) / n_targets
                    state.scaler.scale(loss).backward()
                sum_over_ranks(prompt, loss, world)
                state.scaler.unscale_(state.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_([prompt], config.clip_norm)
                check_finite(loss, grad_norm, use_scaler, state, checkpoint)
                state.scaler.step(state.optimizer)
                state.scaler.update()
                state.optimizer.zero_grad(set_to_none=True)
                state.step, state.next_batch = state.step + 1, state.next_batch + 1
                rng_at_step = torch.get_rng_state()
                tokens_seen += int(lengths[idx].sum()) + len(idx) * init.shape[0] + n_targets
                window.append(loss.item())

                # --- progress and validation
                if state.step % config.log_every == 0 or state.step == total:
                    log(progress_line(state.step, total, start_step, started, window, lr, grad_norm, tokens_seen))
                    window = []
                if due(state.step, config.eval_every, total):
                    validate(state, model, validation_sets, autocast, device, config, total, log)
                    save_on_rank_0(state, checkpoint, config, rng_at_step, rank)
            if state.next_batch >= len(batches):
                state.epoch, state.next_batch = state.epoch + 1, 0
    except KeyboardInterrupt:
        model.train()
        save_on_rank_0(state, checkpoint, config, rng_at_step, rank)  # the interrupted step is redone on --resume
        raise TrainingError(f"interrupted at step {state.step}; saved {checkpoint}: continue with the same command "
                            f"and --resume") from None
    return state.record(seconds=time.time() - started), state.best_prompt


# -----------------------------------------------------------------------------
# the loop's helpers

def training_data(config, tasks, tokenizer):
    """(train tokens of every task as one pool, {task: validation tokens})."""
    train_sets, validation_sets = [], {}
    for task in tasks:
        splits = data.split_tokens(task, ["train", "validation"], tokenizer, config.data_dir, shots=config.shots,
                                   validation_limit=config.validation_limit)
        train_sets.append(splits["train"][0])
        validation_sets[task.name] = splits["validation"][0]
    return data.concat(train_sets), validation_sets


def due(step, every, total):
    return step % every == 0 or step == total


def validate(state, model, validation_sets, autocast, device, config, total, log):
    """Validation loss of every task; their mean (the official eval_average_loss) selects the best prompt."""
    lr = lr_at(state.step - 1, config.lr, config.warmup, total)  # the learning rate of the step just taken
    losses = {name: validation_loss(model, tokens, state.prompt, autocast, device)
              for name, tokens in validation_sets.items()}
    mean = float(np.mean(list(losses.values())))
    if mean < state.best_loss:
        state.best_loss, state.best_step, state.best_prompt = mean, state.step, state.prompt.detach().clone()
    per_task = {f"validation_loss_{k}": v for k, v in losses.items()} if len(losses) > 1 else {}
    state.history.append({"step": state.step, "validation_loss": mean, "lr": lr, **per_task})
    log(f"  validation loss {mean:.4f} (best {state.best_loss:.4f} at step {state.best_step})")


def sum_over_ranks(prompt, loss, world):
    """Data parallel: every rank adds the others' gradients (a rank without examples this step adds zeros)."""
    if world > 1:
        if prompt.grad is None:
            prompt.grad = torch.zeros_like(prompt)
        dist.all_reduce(prompt.grad)
        dist.all_reduce(loss.detach())  # in place: the detached view shares the loss's storage


def save_on_rank_0(state, checkpoint, config, rng, rank):
    if rank == 0:  # one writer; every rank holds the same state
        state.save(checkpoint, config, rng)


def check_finite(loss, grad_norm, use_scaler, state, checkpoint):
    """A non-finite loss or gradient stops the run before the update: nothing non-finite is ever saved.
    (With fp16's gradient scaler an infinite gradient is expected now and then: the scaler skips that step.)"""
    if torch.isfinite(loss) and (use_scaler or torch.isfinite(grad_norm)):
        return
    what = "loss" if not torch.isfinite(loss) else "gradient"
    last = f"step {state.history[-1]['step']}: {checkpoint}" if state.history else "none"
    raise TrainingError(f"non-finite {what} at step {state.step + 1} (epoch {state.epoch}, batch {state.next_batch}); "
                        f"stopped, nothing non-finite was saved; last good checkpoint {last}; try a lower --lr or "
                        f"--precision fp32")


def progress_line(step, total, start_step, started, window, lr, grad_norm, tokens_seen):
    elapsed = time.time() - started
    eta = elapsed / (step - start_step) * (total - step)
    return (f"step {step:>6}/{total} | loss {sum(window) / len(window):.4f} | lr {lr:.2e} | grad norm "
            f"{grad_norm.item():.4f} | {tokens_seen / elapsed:,.0f} tok/s | ETA {eta / 60:.0f}m{eta % 60:02.0f}s")
