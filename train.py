"""
Prompt tuning: the paper's recipe as one dataclass, and one flat loop over it.

The recipe (paper §3) lives in TrainConfig and `recipe()`, nowhere else: TrainConfig holds T5's numbers,
`recipe()` fills those that depend on the task, the shot count and the model family (the LLM runs' numbers). `train()` reads top to bottom: data, state, then the loop with its step, its log line
and its validation marked as sections. Checkpoints hold everything a run needs to continue bit for bit (prompt,
optimizer, schedule position, RNG states, data position); data parallel runs (torchrun) split each global batch
across ranks and sum the prompt's gradient, so N processes compute what one process computes.

The loop trains a pack of R runs at once (R = 1: one run). Runs that share the model, the task, the examples and
their order differ only in their prompt, and the model is frozen: so each step repeats the batch R times and
prepends run r's prompt to copy r (packed_loss). Every run keeps its own loss, gradient, clipping, AdamW moments,
validation and best prompt; a run that turns non-finite stops alone.
"""
import dataclasses
import datetime
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
from support import files
from data import instruct
import model_llama
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
    precision: str = "auto"  # auto: bf16 on CUDA (weights_dtype), fp32 on the CPU (the paper ran fp32)
    dropout: float | None = None  # None: the model's dropout_rate (0.1 for T5), as the paper trained
    data_dir: str = "data_cache"
    log_every: int = 10


FEW_SHOT_STEPS, FEW_SHOT_VALIDATION = 1000, 250  # configs/cross_task_init/fewshot/*/N.toml
NOT_COMPARED_ON_RESUME = ("log_every",)  # the only field that does not change the numbers


def few_shot_batch_size(shots):
    return 2 if shots <= 25 else 8 if shots <= 250 else 16  # configs/cross_task_init/fewshot/*/N.toml


def recipe(task, shots=None, family="t5", **overrides):
    """The paper's TrainConfig for a task, shot count and model family; `overrides` (the user's flags) win over
    every default. T5: TREC trains 50 epochs because it underfits (prompt_tuning_trec.toml); a multi-task run that
    includes TREC keeps 10, as the official multi-task configs (paper §3). Decoder-only models (llama31_8b_instruct
    .toml, per-task tomls): 100 vectors, batch 4, cosine schedule with 3 % warm-up, validation at every tenth of the
    run, 10 epochs (TREC 20); no official LLM few-shot configs exist, so few-shot steps, batches and validation
    examples are T5's."""
    if family == "t5":
        defaults = {"epochs": 50 if task == "trec" else 10, "batch_size": 32}
    else:
        defaults = {"epochs": 20 if task == "trec" else 10, "batch_size": 4, "prompt_len": 100, "schedule": "cosine",
                    "warmup_ratio": 0.03, "eval_every": None}
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


def autocast_for(precision, device):
    """-> (autocast context factory, whether to use a gradient scaler). The prompt and the optimizer stay fp32; the
    weights are in weights_dtype (with bf16 weights, autocast changes nothing but the ops it runs in fp32)."""
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


def weights_dtype(precision, device):
    """The dtype a frozen model is loaded in for a --precision: bf16 on CUDA when it computes in bf16 (its
    activations then stay bf16 between the layers, as Hugging Face's model in bf16 computes; under autocast over
    fp32 weights, the casts and fp32 elementwise work took most of a t5-base step on an H100: docs/speed.md), float32
    otherwise (fp16 runs under autocast over float32 weights: T5 overflows in fp16)."""
    if precision == "auto":
        precision = resolve_precision(precision, device)
    return torch.bfloat16 if precision == "bf16" and device.type == "cuda" else torch.float32


def same_on_all_ranks(value):
    """Rank 0's value on every rank (data parallel ranks must cut the same packs); the value itself otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def distributed():
    """(rank, world size, local rank) under torchrun; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        if torch.cuda.is_available():  # NCCL's collectives run on the current device: this rank's own GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # rank 0 alone evaluates and writes a pack's runs while the others wait at a barrier (packs.py): hours on
        # a large test set, far beyond the default 10 minutes of a collective
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=datetime.timedelta(hours=12))
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def bf16_is_emulated(device):
    """True on a CPU without native bf16 (AVX512-BF16 or AMX): there PyTorch emulates bf16 matrix products, about
    100x slower than fp32 (docs/speed.md), so a bf16 run would crawl."""
    if device.type != "cpu" or not os.path.exists("/proc/cpuinfo"):
        return False  # CUDA has bf16 units; elsewhere (macOS) we cannot tell, so we do not warn
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    return not {"avx512_bf16", "amx_bf16"} & set(flags)


# -----------------------------------------------------------------------------
# packing: R runs that differ only in their prompt share every step of the frozen model

def packed_loss(model, prompts, batch):
    """prompts (R, n, d), a batch of B examples -> (R,) summed cross-entropy of each run over its own copy of the
    batch, in fp32 under any autocast. Row r*B + b is example b with run r's prompt, so a run's loss (and therefore
    its gradient) comes from its rows only: the model is frozen, and neither family mixes rows."""
    R, B = prompts.shape[0], batch["input_ids"].shape[0]
    rows = {k: v.repeat(R, 1) for k, v in batch.items()}  # (R*B, S) and (R*B, T), run-major
    prompt_rows = prompts.repeat_interleave(B, dim=0)  # (R*B, n, d)
    if model.family == "t5":
        logits = model(rows["input_ids"], model_t5.shift_right(rows["labels"]), rows["attention_mask"],
                       prompt=prompt_rows)  # (R*B, T, V)
        token_losses = F.cross_entropy(logits.float().flatten(0, 1), rows["labels"].flatten(), ignore_index=-100,
                                       reduction="none")  # (R*B*T,), 0 on padding
    else:  # decoder-only: each token of the chat text given the prompt and the tokens before it
        token_losses = model_llama.token_losses(model, rows["input_ids"], rows["attention_mask"], rows["labels"],
                                                prompt_rows)  # (R*B, T)
    return token_losses.view(R, -1).sum(1)  # (R,)


def batch_maker(model, tokenizer, config):
    """(tokens, idx) -> the training batch of the model's family: T5's source and target, or a decoder-only model's
    chat text, its labels by --loss (instruct.py)."""
    if model.family == "t5":
        return data.collate
    tail = instruct.tail_length(tokenizer, tokenizer.chat_format)
    return lambda tokens, idx: data.collate_causal(tokens, idx, model_llama.pad_id(model.config), config.loss, tail)


def packed_backward(model, prompts, batch, n_targets, autocast, scaler):
    """The step's forward and backward: each run's summed loss over its copy of the batch / the global batch's
    target tokens (under data parallelism the ranks' gradients then add up to exactly the gradient of the global
    batch's mean loss), and its gradient, which reaches prompts[r] only. -> (R,) losses."""
    with autocast():  # the frozen model; T5.encode prepends row r's prompt to row r's embeddings
        losses = packed_loss(model, prompts, batch) / n_targets
    scaler.scale(losses.sum()).backward()
    return losses


def clip_per_run(grad, max_norm):
    """Each run's gradient (R, n, d) clipped to its own norm, as torch's clip_grad_norm_ clips one run's
    (transformers Trainer's max_grad_norm). -> (R,) the norms before clipping."""
    norms = torch.linalg.vector_norm(grad.flatten(1), dim=1)  # (R,)
    grad.mul_((max_norm / (norms + 1e-6)).clamp(max=1.0)[:, None, None])
    return norms


def activation_bytes(cfg, rows, source_len, target_len, dtype):
    """An estimate, from the shapes, of the memory of one training step over `rows` sequences of source_len
    tokens (the prompt included) and target_len targets: per layer and token the saved inputs of the projections,
    layer norms and dropout masks and the attention probabilities, plus the logits in fp32 with their gradient.
    dtype: the weights' (bf16 weights keep the activations in bf16; fp32 weights under autocast keep the residual
    stream in fp32, so they count as fp32). A packed step of t5-base with bf16 weights peaked at about 8 x d_model +
    3 x d_ff + 3.5 x heads x keys elements per encoder layer and token (torch.cuda.max_memory_allocated on an H100:
    4 runs x 32 x 310 tokens, 25,630 MiB; 10 x 32 x 154, 24,200 MiB; docs/speed.md); the coefficients below come to
    1.35-1.45 times the measured peaks, room for the step's transient tensors, and test_tpv.py checks them on a GPU."""
    element = 2 if dtype == torch.bfloat16 else 4
    d, ff, heads = cfg.d_model, cfg.d_ff, cfg.num_heads
    encoder = cfg.num_layers * source_len * (14 * d + 4 * ff + 4 * heads * source_len)
    decoder = cfg.num_decoder_layers * target_len * (32 * d + 6 * ff + 6 * heads * (target_len + source_len))
    logits = target_len * cfg.vocab_size * (element + 8)
    return rows * ((encoder + decoder) * element + logits)


def memory_budget(device):
    """Bytes the packed activations may take: 80 % of the free GPU memory (what the driver has free and what
    PyTorch's allocator holds unused), or half of the available RAM."""
    if device.type == "cuda":
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(0.8 * (torch.cuda.mem_get_info(device)[0] + unused))
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # macOS has no SC_AVPHYS_PAGES, Windows no sysconf
            available = 8 * 2 ** 30  # unknown: assume 8 GiB free
    return available // 2


def largest_pack(cfg, batch_size, source_len, target_len, precision, device):
    """The most runs whose packed step fits memory_budget(device) (at least 1)."""
    per_run = activation_bytes(cfg, batch_size, source_len, target_len, weights_dtype(precision, device))
    return max(1, memory_budget(device) // per_run)


# -----------------------------------------------------------------------------
# validation

def inference_bytes(cfg, source_len):
    """An estimate of the memory of one row of a T5 inference pass (validation or greedy evaluation) over
    source_len tokens, the prompt included: one layer's attention scores with their fp32 softmax, a few fp32 copies
    of the hidden states, and the decoding cache of the encoder's keys and values for every decoder layer."""
    attention = cfg.num_heads * source_len ** 2 * 12
    hidden = source_len * (4 * cfg.d_model + cfg.d_ff) * 4
    cache = cfg.num_decoder_layers * 2 * source_len * cfg.num_heads * cfg.d_kv * 4
    return attention + hidden + cache


GPU_INFERENCE_ROWS = 1024


def inference_rows(model, device, prompt_len, validation=False):
    """Rows per validation or evaluation forward pass. On the CPU, 64 keep the cores busy. On a GPU, 64 rows of
    t5-base are bound by kernel launches (an H100 took 1.4x fewer microseconds per example to validate and 4.6x
    fewer to decode at 1,024 rows: docs/speed.md), so T5 takes 1,024, or as many as fit the memory budget at the
    longest source. A decoder-only model's validation logits cover the whole chat text (64 x 512 x 128,256 would
    not fit beside an 8B model): 8 rows, the official eval batch; its greedy evaluation 64."""
    if model.family != "t5":
        return 8 if validation else 64
    if device.type != "cuda":
        return 64
    fit = memory_budget(device) // inference_bytes(model.config, data.MAX_SOURCE + prompt_len)
    return int(min(GPU_INFERENCE_ROWS, max(1, fit)))


def in_inference_batches(tokens, runs, rows, work):
    """Calls work(idx) over the examples of `tokens`, shortest first (less padding), about rows // runs at a time
    (each example is repeated for the runs). rows comes from inference_rows, an estimate: where the GPU runs out of
    memory, the slice is halved and tried again, down to one example."""
    order = np.argsort(data.lengths(tokens), kind="stable")
    step, start = max(1, rows // runs), 0
    while start < len(order):
        idx = order[start:start + step]
        try:
            work(idx)
            start += len(idx)
            continue
        except torch.cuda.OutOfMemoryError:
            if step == 1:
                raise
        step //= 2  # out of the except block: the failed batch's tensors are gone, so the cache can be emptied
        torch.cuda.empty_cache()


@torch.no_grad()
def validation_losses(model, tokens, prompts, autocast, device, make_batch):
    """(R,) mean cross-entropy per target token over a whole split for each of R prompts (R, n, d), dropout off,
    in_inference_batches."""
    model.eval()
    totals, count = torch.zeros(prompts.shape[0], dtype=torch.float64), 0

    def add(idx):
        nonlocal totals, count
        batch = {k: v.to(device) for k, v in make_batch(tokens, idx).items()}
        with autocast():
            totals += packed_loss(model, prompts, batch).double().cpu()
        count += int((batch["labels"] != -100).sum())
    # every rank validates: the same rows on all (their free memory may differ), so that all pick the same best step
    rows = same_on_all_ranks(inference_rows(model, device, prompts.shape[1], validation=True))
    in_inference_batches(tokens, prompts.shape[0], rows, add)
    model.train()
    return (totals / max(count, 1)).tolist()


# -----------------------------------------------------------------------------
# the state of a pack of runs: saves and restores itself, so that a resumed pack continues bit for bit

@dataclass
class TrainState:
    prompts: torch.nn.Parameter  # (R, n, d): one prompt per run, the only trained tensor
    inits: torch.Tensor  # (R, n, d), where each run started
    optimizer: torch.optim.AdamW  # over the stack: AdamW is element-wise, so this is R AdamWs (test_tpv.py)
    scaler: torch.amp.GradScaler
    step: int = 0
    epoch: int = 0
    next_batch: int = 0  # position inside the epoch's batches
    best_loss: list = None  # per run
    best_step: list = None
    best_prompts: torch.Tensor = None  # (R, n, d)
    history: list = None  # per run: [{"step", "validation_loss", "lr", ...}, ...]
    stopped: dict = field(default_factory=dict)  # run index -> {"reason", "steps" it took}; it no longer moves

    @classmethod
    def new(cls, config, inits, device, use_scaler):
        prompts = torch.nn.Parameter(inits.clone().to(device))
        R = inits.shape[0]
        return cls(prompts, inits, torch.optim.AdamW([prompts], lr=config.lr, weight_decay=config.weight_decay),
                   torch.amp.GradScaler(device.type, enabled=use_scaler), best_loss=[math.inf] * R,
                   best_step=[0] * R, best_prompts=prompts.detach().clone(), history=[[] for _ in range(R)])

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
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if stopped:
            for t, old in zip([self.prompts.data, *self.moments()], kept):
                t[stopped] = old

    def save(self, path, config, runs, pack, rng_cpu):
        """Everything needed to continue; rng_cpu is the generator state at the start of the next step."""
        tensors = {"prompt": self.prompts, "init": self.inits, "best_prompt": self.best_prompts, "rng_cpu": rng_cpu,
                   **{f"adam{k}": v for k, v in self.optimizer.state_dict()["state"].get(0, {}).items()}}
        if self.prompts.device.type == "cuda":
            tensors["rng_cuda"] = torch.cuda.get_rng_state(self.prompts.device)
        bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise TrainingError(f"refusing to checkpoint non-finite {', '.join(bad)}")
        state = {"args": comparable(config), "runs": runs, "pack": pack, "step": self.step, "epoch": self.epoch,
                 "next_batch": self.next_batch, "best_loss": self.best_loss, "best_step": self.best_step,
                 "history": self.history, "stopped": self.stopped,
                 "param_groups": self.optimizer.state_dict()["param_groups"],
                 "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {}}
        tensors = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
        files.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"state": json.dumps(state)}))

    def restore(self, path, config, runs, pack):
        tensors, state = load_checkpoint(path)
        now, then = comparable(config) | {"runs": runs, "pack": pack}, state["args"] | {
            "model": os.path.normpath(state["args"].get("model", "")), "runs": state.get("runs", runs),
            "pack": state.get("pack", pack)}
        changed = [k for k in now if k in then and then[k] != now[k]]
        if changed:
            k = changed[0]
            raise TrainingError(f"--resume with different arguments: {k} was {then[k]!r}, now {now[k]!r}; "
                                f"rerun with the original arguments, or drop --resume and pass --force to start "
                                f"over")
        if tensors["prompt"].dim() == 2:  # a checkpoint of one run, as tpv wrote them before packs
            tensors = {k: v[None] if v.dim() == 2 else v for k, v in tensors.items()}
            state |= {k: [state[k]] for k in ("best_loss", "best_step", "history")}
        if not torch.equal(tensors["init"], self.inits.cpu()):  # e.g. a source prompt of --init a+b retrained since
            raise TrainingError(f"--resume: the initial prompts differ from the checkpoint's ({path}); rerun with the "
                                f"original --init and prompts, or drop --resume and pass --force to start over")
        device = self.prompts.device
        with torch.no_grad():
            self.prompts.copy_(tensors["prompt"])
        self.best_prompts = tensors["best_prompt"].to(device)
        self.optimizer.load_state_dict({"state": {0: {k[4:]: v for k, v in tensors.items() if k.startswith("adam")}},
                                        "param_groups": state["param_groups"]})
        if self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(tensors["rng_cpu"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng_cuda"], device)
        for key in ("step", "epoch", "next_batch", "best_loss", "best_step", "history"):
            setattr(self, key, state[key])
        self.stopped = {int(r): why for r, why in state.get("stopped", {}).items()}


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

def train(config, model, tokenizer, tasks, inits, checkpoint, runs, resume=False, log=print, pack=None):
    """Tunes R prompts from inits (R, n, d) on `tasks` (several: the multi-task SPoT baseline), one run per
    prompt, all in one pass over the frozen model: the same batches, schedule and seeds as each run alone, its own
    loss, gradient, clipping, AdamW moments, validation and best prompt. `runs` names them (checked on resume);
    `config` is the recipe they share; `pack` the --pack that cut them (dropout masks depend on the pack, so a
    resume compares it). Checkpoints the pack to `checkpoint` at every validation.
    Returns the state: state.record(r), state.best_prompts[r], state.stopped; the caller writes the files."""
    rank, world, _ = distributed()
    device = next(model.parameters()).device
    precision = resolve_precision(config.precision, device)
    autocast, use_scaler = autocast_for(precision, device)
    # --- state: the prompts are the only trained tensor; one AdamW over them
    state = TrainState.new(config, inits, device, use_scaler)
    if config.shots == 0:  # zero-shot: the initial prompts are the result
        return state
    if use_scaler and inits.shape[0] > 1:  # the scaler skips a step for all runs when one overflows
        raise TrainingError("--precision fp16 trains one run at a time (its loss scaler would skip every run's "
                            "step when one overflows); use bf16, or --pack 1")
    prompts = state.prompts
    if resume and os.path.exists(checkpoint):
        state.restore(checkpoint, config, runs, pack)
        log(f"resumed {checkpoint} at step {state.step}")
    else:
        torch.manual_seed(config.seed + rank)  # dropout masks; the data order has its own seeded generator

    # --- data: the train examples of every task in one pool; validation per task (their mean selects)
    train_tokens, validation_sets = training_data(config, tasks, tokenizer)
    lengths = data.lengths(train_tokens)  # of the sources (or chat prefixes): batches group similar lengths
    seen_per_example = lengths + np.diff(train_tokens["target_offsets"]) + inits.shape[1]  # + targets, the prompt
    make_batch = batch_maker(model, tokenizer, config)
    total = config.max_steps or config.epochs * math.ceil(len(lengths) / config.batch_size)
    every = validation_interval(config, total)

    R = inits.shape[0]
    log(f"training {'+'.join(t.name for t in tasks)}: {len(lengths):,} examples, {total:,} steps "
        f"(batch {config.batch_size}{f' over {world} ranks' if world > 1 else ''}"
        f"{f', {R} runs packed' if R > 1 else ''}), {precision}, {device}")
    if precision == "bf16" and bf16_is_emulated(device):
        log("warning: this CPU has no native bf16 (AVX512-BF16 or AMX): PyTorch emulates it, about 100x slower "
            "than fp32; use --precision fp32")
    model.train()  # dropout on, as in the paper's runs (the weights stay frozen)
    started, start_step, tokens_seen, window = time.time(), state.step, 0, []
    rng_at_step = torch.get_rng_state()  # a checkpoint taken from here on continues exactly
    try:
        validated = any(state.history[r] and state.history[r][-1]["step"] == state.step for r in state.running())
        if state.step and due(state.step, every, total) and state.running() and not validated:  # interrupted before it
            validate(state, model, validation_sets, make_batch, autocast, device, config, total, log)
            save_on_rank_0(state, checkpoint, config, (runs, pack), rng_at_step, rank)
        while state.step < total and state.running():
            batches = data.epoch_batches(lengths, config.batch_size, config.seed, state.epoch)
            while state.next_batch < len(batches) and state.step < total and state.running():
                # --- one step: this rank's share of the global batch, each running run's loss per target token
                idx = batches[state.next_batch]
                mine = idx[rank::world]
                n_targets = loss_tokens(make_batch, train_tokens, idx)
                lr = lr_at(state.step, config, total)
                state.optimizer.param_groups[0]["lr"] = lr  # the prompts are the one parameter group
                running = state.running()
                losses = torch.zeros(len(running), device=device)  # a rank without examples adds nothing
                if len(mine):
                    batch = {k: v.to(device) for k, v in make_batch(train_tokens, mine).items()}
                    trained = prompts if len(running) == R else prompts[running]  # (A, n, d): A running
                    losses = packed_backward(model, trained, batch, n_targets, autocast, state.scaler)  # (A,)
                sum_over_ranks(prompts, losses, world)
                state.scaler.unscale_(state.optimizer)
                grad_norms = clip_per_run(prompts.grad, config.clip_norm)[running]  # (A,)
                stop_non_finite(state, running, losses, grad_norms, use_scaler, log)
                if not state.running():  # every run stopped: nothing left to update, validate or save
                    break
                state.step_optimizer()
                state.optimizer.zero_grad(set_to_none=True)
                state.step, state.next_batch = state.step + 1, state.next_batch + 1
                rng_at_step = torch.get_rng_state()
                tokens_seen += len(running) * int(seen_per_example[idx].sum())
                window += losses[torch.isfinite(losses)].tolist()

                # --- progress and validation
                if state.step % config.log_every == 0 or state.step == total:
                    log(progress_line(state.step, total, start_step, started, window, lr, grad_norms, tokens_seen))
                    window = []
                if due(state.step, every, total):
                    validate(state, model, validation_sets, make_batch, autocast, device, config, total, log)
                    save_on_rank_0(state, checkpoint, config, (runs, pack), rng_at_step, rank)
            if state.next_batch >= len(batches):
                state.epoch, state.next_batch = state.epoch + 1, 0
    except KeyboardInterrupt:
        model.train()
        save_on_rank_0(state, checkpoint, config, (runs, pack), rng_at_step, rank)  # the step is redone on --resume
        raise TrainingError(f"interrupted at step {state.step}; saved {checkpoint}: continue with the same command "
                            f"and --resume") from None
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(f"out of GPU memory with {R} runs in a step (batch {config.batch_size}); "
                            f"{f'try --pack {max(1, R // 2)}' if R > 1 else 'try a smaller --batch-size'}") from None
    state.seconds = time.time() - started
    return state


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


def loss_tokens(make_batch, tokens, idx):
    """The tokens of the global batch in the loss (T5: its targets; decoder-only: what --loss and truncation
    leave): the mean loss divides by them, on every rank."""
    return int((make_batch(tokens, idx)["labels"] != -100).sum())


def due(step, every, total):
    return step % every == 0 or step == total


def validate(state, model, validation_sets, make_batch, autocast, device, config, total, log):
    """Validation loss of every task for every running run; their mean over tasks (the official
    eval_average_loss) selects each run's best prompt."""
    lr = lr_at(state.step - 1, config, total)  # the learning rate of the step just taken
    running = state.running()
    pack = state.prompts.detach()[running]  # (A, n, d)
    losses = {name: validation_losses(model, tokens, pack, autocast, device, make_batch)
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


def sum_over_ranks(prompts, losses, world):
    """Data parallel: every rank adds the others' gradients (a rank without examples this step adds zeros)."""
    if world > 1:
        if prompts.grad is None:
            prompts.grad = torch.zeros_like(prompts)
        dist.all_reduce(prompts.grad)
        dist.all_reduce(losses.detach())  # in place: the detached view shares the losses' storage


def save_on_rank_0(state, checkpoint, config, pack, rng, rank):
    if rank == 0:  # one writer; every rank holds the same state
        state.save(checkpoint, config, *pack, rng)


def stop_non_finite(state, running, losses, grad_norms, use_scaler, log):
    """A run whose loss or gradient is non-finite stops before its update, alone: its last good state stays and
    nothing non-finite reaches it (state.step_optimizer). (With fp16's gradient scaler an infinite gradient is
    expected now and then: the scaler skips that step.)"""
    bad_loss, bad_grad = (~torch.isfinite(torch.stack([losses, grad_norms]))).tolist()  # one device sync
    for i, r in enumerate(running):
        if bad_loss[i] or (bad_grad[i] and not use_scaler):
            what = "loss" if bad_loss[i] else "gradient"
            last = f"the prompt of step {state.best_step[r]}" if state.history[r] else "none"
            reason = (f"non-finite {what} at step {state.step + 1} (epoch {state.epoch}, batch {state.next_batch}); "
                      f"its best prompt so far: {last}; try a lower --lr or --precision fp32")
            state.stopped[r] = {"reason": reason, "steps": state.step}
            log(f"  run {r} stopped: {reason}")


def progress_line(step, total, start_step, started, window, lr, grad_norms, tokens_seen):
    elapsed = time.time() - started
    eta = elapsed / (step - start_step) * (total - step)
    loss = sum(window) / len(window) if window else math.nan
    return (f"step {step:>6}/{total} | loss {loss:.4f} | lr {lr:.2e} | grad norm "
            f"{grad_norms.mean().item():.4f} | {tokens_seen / elapsed:,.0f} tok/s | ETA {eta / 60:.0f}m{eta % 60:02.0f}s")
