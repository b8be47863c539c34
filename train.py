"""
Prompt tuning: the paper's recipe as one dataclass, and one flat loop over it.

The recipe (paper §3) lives in TrainConfig and `recipe()`, nowhere else: TrainConfig holds T5's numbers, `recipe()`
fills those that depend on the task, the shot count and the model family (families.py: the LLM runs' numbers).
`train()` reads top to bottom like nanoGPT's loop: the state, the data, then one step after another (forward and
backward, clipping, the update, a log line), with validation and a checkpoint at every validation.

The loop trains a pack of R runs at once (R = 1: one run). Runs that share the model, the task, the examples and
their order differ only in their prompt, and the model is frozen: so each step gives the family the R prompts and
the batch, and it returns each prompt's loss over its own copy of the batch (run_losses). Every run keeps its own
loss, gradient, clipping, AdamW moments, validation and best prompt; a run that turns non-finite stops alone.
Checkpoints (support/resume.py) hold everything a pack needs to continue bit for bit.
"""
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import data
import evaluation
import families
from support import devices
from support import resume as checkpoints


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, interrupted, out of memory); the message says where and what to do."""


# -----------------------------------------------------------------------------
# the recipe

@dataclass
class TrainConfig:
    # what is trained
    task: str = "mnli"  # a task, or a comma list: the multi-task SPoT baseline (paper §3)
    model: str = "t5-base"  # paper §2: the original T5 v1.0 t5-base
    origin: int = 0  # origin_0 .. origin_9 (paper §3: 10 random inits in v1)
    init: str = "origin"  # where tuning starts: origin, random, vocab, text:..., a prompt file, or task[+task]
    prompt_len: int = 50  # paper §2: 50 encoder vectors (PEFT's 50 decoder vectors are never used at inference);
    #                       decoder-only models: 100 (recipe())
    shots: int | None = None  # few-shot: N training examples (paper §3); 0: no training, the init is the result
    # paper §3, configs/prompt_tuning/single-task/prompt_tuning.toml
    lr: float = 0.3  # AdamW (transformers' default betas and eps)
    weight_decay: float = 1e-5
    warmup: int = 500  # linear schedule: 0 -> lr over 500 steps, then linearly to 0
    schedule: str = "linear"  # after the warm-up: "linear" to 0 (T5), or "cosine" to 0 (the LLM runs)
    warmup_ratio: float | None = None  # set: warmup = ceil(ratio x steps), transformers' warmup_ratio (LLMs: 0.03)
    clip_norm: float = 1.0  # transformers Trainer's max_grad_norm
    batch_size: int | None = None  # 32; few-shot: 2 / 8 / 16 (recipe())
    epochs: int | None = None  # 10; TREC 50 (recipe())
    max_steps: int | None = None  # None: epochs x batches; few-shot: 1000 (recipe())
    eval_every: int | None = 100  # validation loss every 100 steps; the prompt with the lowest one is kept;
    #                               None: ten times a run, transformers' eval_steps=0.1 (the LLM runs)
    validation_limit: int | None = None  # few-shot: the first 250 validation examples (max_valid_samples)
    seed: int = 42  # transformers' default seed; the data seed is data.splits.SEED
    loss: str = "full"  # decoder-only: "full" chat text, as the official SFTTrainer runs, or the "answer" only
    # how it runs
    precision: str = "auto"  # auto: bf16 on CUDA (device.weights_dtype), fp32 on the CPU (the paper ran fp32)
    dropout: float | None = None  # None: the model's dropout_rate (0.1 for T5), as the paper trained
    data_dir: str = "data_cache"
    log_every: int = 10


FEW_SHOT_STEPS, FEW_SHOT_VALIDATION = 1000, 250  # configs/cross_task_init/fewshot/*/N.toml


def few_shot_batch_size(shots):
    return 2 if shots <= 25 else 8 if shots <= 250 else 16  # configs/cross_task_init/fewshot/*/N.toml


def recipe(task, shots=None, family=families.DEFAULT, **overrides):
    """The paper's TrainConfig for a task, shot count and model family (its module: recipe_defaults gives its
    numbers); `overrides` (the user's flags) win over every default. A multi-task run that includes TREC keeps 10
    epochs, as the official multi-task configs (paper §3). No official LLM few-shot configs exist, so few-shot
    steps, batches and validation examples are T5's for every family."""
    defaults = family.recipe_defaults(task)
    if shots:
        defaults.update(max_steps=FEW_SHOT_STEPS, batch_size=few_shot_batch_size(shots),
                        validation_limit=FEW_SHOT_VALIDATION)
    if "warmup" in overrides:  # --warmup N: N steps, not the ratio
        defaults["warmup_ratio"] = None
    return TrainConfig(**{"task": task, "shots": shots, **defaults, **overrides})


def lr_at(step, config, total):
    """transformers' schedules with warm-up: 0 -> lr over the warm-up steps, then linearly (T5) or along a half
    cosine (get_cosine_schedule_with_warmup, the LLM runs) to 0. The first update uses step 0, so its learning
    rate is 0, as in the official runs."""
    warmup = warmup_steps(config, total)
    if step < warmup:
        return config.lr * step / max(1, warmup)
    if config.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return config.lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return config.lr * max(0.0, (total - step) / max(1, total - warmup))  # this order of operations: T5's runs


def warmup_steps(config, total):
    # transformers' TrainingArguments.get_warmup_steps: ceil(ratio x steps) when a ratio is given
    return math.ceil(total * config.warmup_ratio) if config.warmup_ratio is not None else config.warmup



def validation_interval(config, total):
    # transformers turns eval_steps=0.1 into ceil(0.1 x max_steps)
    return config.eval_every or math.ceil(total / 10)


def due(step, every, total):
    return step % every == 0 or step == total


# -----------------------------------------------------------------------------
# the state of a pack of runs (support/resume.py saves and restores it)

@dataclass
class TrainState:
    prompts: torch.nn.Parameter  # (R, n, d): one prompt per run, the only trained tensor
    inits: torch.Tensor  # (R, n, d), where each run started
    optimizer: torch.optim.AdamW  # over the stack: AdamW is element-wise, so this is R AdamWs (test_tpv.py)
    step: int = 0
    epoch: int = 0
    next_batch: int = 0  # position inside the epoch's batches
    best_loss: list = None  # per run
    best_step: list = None
    best_prompts: torch.Tensor = None  # (R, n, d)
    history: list = None  # per run: [{"step", "validation_loss", "lr", ...}, ...]
    stopped: dict = field(default_factory=dict)  # run index -> {"reason", "steps" it took}; it no longer moves
    rng: torch.Tensor = None  # the random state at the start of the next step: a checkpoint continues from it
    seconds: float = 0.0  # training time of this call

    @classmethod
    def new(cls, config, inits, device):
        prompts = torch.nn.Parameter(inits.clone().to(device))
        R = inits.shape[0]
        return cls(prompts, inits, torch.optim.AdamW([prompts], lr=config.lr, weight_decay=config.weight_decay),
                   best_loss=[math.inf] * R, best_step=[0] * R, best_prompts=prompts.detach().clone(),
                   history=[[] for _ in range(R)], rng=torch.get_rng_state())

    def running(self):
        return [r for r in range(self.prompts.shape[0]) if r not in self.stopped]

    def record(self, r, **extra):
        """What run r's JSON record keeps of the state."""
        if self.step == 0 and not self.history[r]:  # zero-shot: the init is the result
            return {"steps": 0, "history": [], **extra}
        steps = self.stopped[r]["steps"] if r in self.stopped else self.step
        best = self.best_loss[r] if math.isfinite(self.best_loss[r]) else None  # None: never validated (JSON)
        return {"best_step": self.best_step[r], "best_validation_loss": best, "steps": steps,
                "history": self.history[r], **extra}

    def moments(self):
        """AdamW's (R, n, d) running averages (absent before the first step)."""
        return [self.optimizer.state[self.prompts][k] for k in ("exp_avg", "exp_avg_sq")
                if k in self.optimizer.state.get(self.prompts, {})]

    def step_optimizer(self):
        """One AdamW step of the running runs: a stopped run's prompt and moments stay as they were (no momentum
        or weight decay drift), and its gradient (maybe non-finite) never reaches the moments."""
        stopped = list(self.stopped)
        if stopped:
            self.prompts.grad[stopped] = 0
            kept = [t[stopped].clone() for t in [self.prompts.data, *self.moments()]]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if stopped:
            for t, old in zip([self.prompts.data, *self.moments()], kept):
                t[stopped] = old


# -----------------------------------------------------------------------------
# the loop

def train(config, model, tokenizer, tasks, inits, checkpoint, runs, resume=False, log=print, pack=None):
    """Tunes R prompts from inits (R, n, d) on `tasks` (several: the multi-task SPoT baseline), one run per
    prompt, all in one pass over the frozen model: the same batches, schedule and seeds as each run alone, its own
    loss, gradient, clipping, AdamW moments, validation and best prompt. `runs` names them and `pack` is the --pack
    that cut them (a resume checks both). Checkpoints the pack to `checkpoint` at every validation.
    Returns the state: state.record(r), state.best_prompts[r], state.stopped; the caller writes the files."""
    device, family = next(model.parameters()).device, families.of(model)
    autocast = devices.autocast_for(config.precision, device)
    state = TrainState.new(config, inits, device)  # the prompts are the only trained tensor; one AdamW over them
    if config.shots == 0:  # zero-shot: the initial prompts are the result
        return state
    if resume and os.path.exists(checkpoint):
        checkpoints.restore(state, checkpoint, config, runs, pack)
        log(f"resumed {checkpoint} at step {state.step}")
    else:
        torch.manual_seed(config.seed)  # dropout masks; the data order has its own seeded generator
        state.rng = torch.get_rng_state()
    train_tokens, validation_sets = training_data(config, tasks, tokenizer)
    lengths, make_batch = data.lengths(train_tokens), family.batch_maker(model, tokenizer, config.loss)
    total = config.max_steps or config.epochs * math.ceil(len(lengths) / config.batch_size)
    every = validation_interval(config, total)
    log(start_line(config, tasks, train_tokens, total, inits.shape[0], device))
    evaluate = lambda: validate(state, model, validation_sets, make_batch, autocast, config, total, log)
    save = lambda: checkpoints.save(state, checkpoint, config, runs, pack)
    model.train()  # dropout on, as in the paper's runs (the weights stay frozen)
    meter = Meter(state.step, total, lengths + np.diff(train_tokens["target_offsets"]) + inits.shape[1])
    try:
        if validation_missed(state, every, total):  # interrupted after a step, before its validation
            evaluate(), save()
        for state.epoch, state.next_batch, idx in batches(lengths, config, state, total):
            batch = make_batch(train_tokens, idx)  # on the CPU, where its target tokens are counted without a sync
            n_targets, batch = int((batch["labels"] != -100).sum()), {k: v.to(device) for k, v in batch.items()}
            lr = state.optimizer.param_groups[0]["lr"] = lr_at(state.step, config, total)
            # --- one step: the running runs' losses per target token, their gradients, clipping, AdamW
            running = state.running()  # (A of R runs): a stopped run no longer trains
            trained = state.prompts if len(running) == inits.shape[0] else state.prompts[running]  # (A, n, d)
            losses = forward_backward(model, trained, batch, n_targets, autocast)  # (A,)
            grad_norms = clip_per_run(state.prompts.grad, config.clip_norm)[running]  # (A,) before clipping
            if not stop_non_finite(state, running, losses, grad_norms, log):
                break  # every run stopped: nothing left to update, validate or save
            state.step_optimizer()
            state.step, state.next_batch, state.rng = state.step + 1, state.next_batch + 1, torch.get_rng_state()
            # --- progress and validation
            meter.add(losses, idx, len(running))
            if state.step % config.log_every == 0 or state.step == total:
                log(meter.line(state.step, lr, grad_norms))
            if due(state.step, every, total):
                evaluate(), save()
    except KeyboardInterrupt:
        model.train()
        save()  # the interrupted step is redone on --resume
        raise TrainingError(f"interrupted at step {state.step}; saved {checkpoint}: continue with the same command "
                            f"and --resume") from None
    except torch.cuda.OutOfMemoryError:
        R = inits.shape[0]
        raise TrainingError(f"out of GPU memory with {R} runs in a step (batch {config.batch_size}); "
                            f"{f'try --pack {max(1, R // 2)}' if R > 1 else 'try a smaller --batch-size'}") from None
    state.seconds = meter.seconds()
    return state


# -----------------------------------------------------------------------------
# the loop's helpers

def forward_backward(model, prompts, batch, n_targets, autocast):
    """The step's forward and backward: each of A prompts' loss over its copy of the batch per target token of the
    batch (n_targets; the family's run_losses), and its gradient, which reaches prompts[r] only. -> (A,) losses."""
    with autocast():  # the frozen model; the prompts stay fp32
        losses = families.of(model).run_losses(model, prompts, batch) / n_targets
    losses.sum().backward()
    return losses


def batches(lengths, config, state, total):
    """(epoch, position, example indices) of every step from the state's data position on: the batches of each
    epoch are a pure function of (seed, epoch) (data.epoch_batches), so a resumed run sees the same ones."""
    epoch, start = state.epoch, state.next_batch
    while state.step < total:
        order = data.epoch_batches(lengths, config.batch_size, config.seed, epoch)
        for position in range(start, len(order)):
            if state.step >= total:
                return
            yield epoch, position, order[position]
        epoch, start = epoch + 1, 0


def training_data(config, tasks, tokenizer):
    """(train tokens of every task as one pool, {task: validation tokens})."""
    train_sets, validation_sets = [], {}
    for task in tasks:
        splits = data.split_tokens(task, ["train", "validation"], tokenizer, config.data_dir, shots=config.shots,
                                   validation_limit=config.validation_limit)
        train_sets.append(splits["train"][0])
        validation_sets[task.name] = splits["validation"][0]
    return data.concat(train_sets), validation_sets


def start_line(config, tasks, train_tokens, total, R, device):
    precision = devices.resolve_precision(config.precision, device)
    line = (f"training {'+'.join(t.name for t in tasks)}: {len(data.lengths(train_tokens)):,} examples, {total:,} "
            f"steps (batch {config.batch_size}{f', {R} runs packed' if R > 1 else ''}), {precision}, {device}")
    if precision == "bf16" and devices.bf16_is_emulated(device):
        line += ("\nwarning: this CPU has no native bf16 (AVX512-BF16 or AMX): PyTorch emulates it, about 100x "
                 "slower than fp32; use --precision fp32")
    return line


def validation_missed(state, every, total):
    """A checkpoint taken at a step that was due a validation, before it ran (Ctrl-C during validation)."""
    validated = any(state.history[r] and state.history[r][-1]["step"] == state.step for r in state.running())
    return state.step and due(state.step, every, total) and state.running() and not validated


def clip_per_run(grad, max_norm):
    """Each run's gradient (R, n, d) clipped to its own norm, as torch's clip_grad_norm_ clips one run's
    (transformers Trainer's max_grad_norm). -> (R,) the norms before clipping."""
    norms = torch.linalg.vector_norm(grad.flatten(1), dim=1)  # (R,)
    grad.mul_((max_norm / (norms + 1e-6)).clamp(max=1.0)[:, None, None])
    return norms


def stop_non_finite(state, running, losses, grad_norms, log):
    """A run whose loss or gradient is non-finite stops before its update, alone: its last good state stays and
    nothing non-finite reaches it (state.step_optimizer). -> whether any run goes on."""
    bad_loss, bad_grad = (~torch.isfinite(torch.stack([losses.detach(), grad_norms]))).tolist()  # one device sync
    for i, r in enumerate(running):
        if bad_loss[i] or bad_grad[i]:
            what = "loss" if bad_loss[i] else "gradient"
            last = f"the prompt of step {state.best_step[r]}" if state.history[r] else "none"
            reason = (f"non-finite {what} at step {state.step + 1} (epoch {state.epoch}, batch {state.next_batch}); "
                      f"its best prompt so far: {last}; try a lower --lr or --precision fp32")
            state.stopped[r] = {"reason": reason, "steps": state.step}
            log(f"  run {r} stopped: {reason}")
    return bool(state.running())


def validate(state, model, validation_sets, make_batch, autocast, config, total, log):
    """Validation loss of every task for every running run; their mean over tasks (the official
    eval_average_loss) selects each run's best prompt."""
    lr = lr_at(state.step - 1, config, total)  # the learning rate of the step just taken
    running = state.running()
    pack = state.prompts.detach()[running]  # (A, n, d)
    losses = {name: evaluation.validation_losses(model, tokens, pack, autocast, make_batch)
              for name, tokens in validation_sets.items()}  # task -> (A,)
    for i, r in enumerate(running):
        mean = float(np.mean([per_run[i] for per_run in losses.values()]))
        if mean < state.best_loss[r]:
            state.best_loss[r], state.best_step[r] = mean, state.step
            state.best_prompts[r] = pack[i]
        per_task = {f"validation_loss_{k}": v[i] for k, v in losses.items()} if len(losses) > 1 else {}
        state.history[r].append({"step": state.step, "validation_loss": mean, "lr": lr, **per_task})
    means = [state.history[r][-1]["validation_loss"] for r in running]
    if len(state.inits) == 1:
        log(f"  validation loss {means[0]:.4f} (best {state.best_loss[0]:.4f} at step {state.best_step[0]})")
    else:
        log(f"  validation loss of {len(running)} runs: mean {np.mean(means):.4f}, min {min(means):.4f}, "
            f"max {max(means):.4f}")


class Meter:
    """Progress of the loop: the mean loss since the last line, tokens per second and the time left."""

    def __init__(self, start_step, total, tokens_per_example):
        self.start_step, self.total, self.tokens_per_example = start_step, total, tokens_per_example
        self.started, self.tokens, self.window = time.time(), 0, []

    def add(self, losses, idx, runs):
        self.tokens += runs * int(self.tokens_per_example[idx].sum())
        self.window += losses[torch.isfinite(losses)].tolist()

    def seconds(self):
        return time.time() - self.started

    def line(self, step, lr, grad_norms):
        elapsed = self.seconds()
        eta = elapsed / (step - self.start_step) * (self.total - step)
        loss = sum(self.window) / len(self.window) if self.window else math.nan
        self.window = []
        return (f"step {step:>6}/{self.total} | loss {loss:.4f} | lr {lr:.2e} | grad norm "
                f"{grad_norms.mean().item():.4f} | {self.tokens / elapsed:,.0f} tok/s | ETA {eta / 60:.0f}m"
                f"{eta % 60:02.0f}s")
