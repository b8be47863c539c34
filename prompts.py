"""
Soft prompts: where they start (the paper's origins and the other initialisations) and how they are stored.

A prompt file is one safetensors file holding `prompt` (the tuned prompt) and `init` (where tuning started),
both float32 (n, d), plus string metadata. The task prompt vector is always `prompt - init`, recoverable from
the file alone (a PEFT checkpoint cannot do this: PEFT never saves the init).
"""
import json
import math
import os
from typing import NamedTuple

import numpy as np
import torch

FORMAT_VERSION = "1"
N_ORIGINS = 10


class PromptError(ValueError):
    """A prompt file or initialisation the user asked for cannot be used; the message says why and how to fix."""


# -----------------------------------------------------------------------------
# initialisations

def origin_token_ids(index, n):
    """The paper's origin_<index> (official scripts/create_origin.py): np.random.seed(1024) once, then the
    index-th successive permutation of the ids [0, 5000); the encoder prompt takes its first n ids."""
    if not 0 <= index < N_ORIGINS:
        raise PromptError(f"origin must be 0..{N_ORIGINS - 1}, got {index}")
    rng = np.random.RandomState(1024)  # legacy MT19937: the same stream as the official np.random.seed(1024)
    for _ in range(index + 1):
        permutation = rng.permutation(5000)
    return torch.from_numpy(permutation[:n].copy())


def embedding_rows(model, ids):
    return model.shared.weight[ids.to(model.shared.weight.device)].detach().float().cpu().clone()  # (n, d)


def initial_prompt(model, tokenizer, spec, n, seed=0):
    """origin:I | random | vocab | text:... -> (n, d) float32 on the CPU, and a description for the metadata.
    (Files and sums of task vectors are resolved by the caller, which knows where runs live.)"""
    d = model.config.d_model
    g = torch.Generator().manual_seed(seed)
    if spec.startswith("origin:"):
        return embedding_rows(model, origin_token_ids(int(spec[7:]), n))
    if spec == "random":  # PEFT's RANDOM: nn.Embedding's N(0, 1) init (off the vocabulary manifold)
        return torch.randn(n, d, generator=g)
    if spec == "vocab":  # PEFT's SAMPLE_VOCAB: rows of uniformly drawn token ids
        return embedding_rows(model, torch.randint(0, model.config.vocab_size, (n,), generator=g))
    if spec.startswith("text:"):  # PEFT's TEXT: the text's token embeddings, repeated and cut to n
        ids = tokenizer.encode(spec[5:])
        ids = (ids * math.ceil(n / len(ids)))[:n]
        return embedding_rows(model, torch.tensor(ids))
    raise PromptError(f"unknown --init {spec!r}: use random, vocab, text:\"...\", a prompt file, or task[+task]")


# -----------------------------------------------------------------------------
# prompt files

def save_prompt(path, prompt, init, meta):
    """Writes path atomically; refuses non-finite tensors (nothing non-finite is ever saved)."""
    from safetensors.torch import save_file
    prompt, init = prompt.detach().float().cpu().clone(), init.detach().float().cpu().clone()  # never shared
    if not (torch.isfinite(prompt).all() and torch.isfinite(init).all()):
        raise ValueError(f"refusing to save a non-finite prompt to {path}")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in {**meta, "version": FORMAT_VERSION}.items()}
    save_file({"prompt": prompt, "init": init}, path + ".tmp", metadata=metadata)
    os.replace(path + ".tmp", path)


def load_prompt(path):
    """-> (prompt, init, metadata), each checked."""
    from safetensors import SafetensorError, safe_open
    if not os.path.exists(path):
        raise PromptError(f"{path}: no such prompt file")
    try:
        with safe_open(path, "pt") as f:
            keys, meta = set(f.keys()), f.metadata() or {}
            if not {"prompt", "init"} <= keys:
                raise PromptError(f"{path}: not a tpv prompt file (it holds {', '.join(sorted(keys)) or 'nothing'}; "
                                  f"expected 'prompt' and 'init'); to bring in other prompts use: python tpv.py import")
            prompt, init = f.get_tensor("prompt"), f.get_tensor("init")
    except (SafetensorError, OSError) as e:
        raise PromptError(f"{path}: unreadable safetensors file ({e})") from None
    if prompt.dim() != 2 or prompt.shape != init.shape or not prompt.is_floating_point():
        raise PromptError(f"{path}: prompt {tuple(prompt.shape)} and init {tuple(init.shape)} must be equal (n, d)")
    if not (torch.isfinite(prompt).all() and torch.isfinite(init).all()):
        raise PromptError(f"{path}: holds NaN or infinite values")
    return prompt.float(), init.float(), meta


def check_fits(path, prompt, meta, model_name, d_model):
    """A prompt file must come from the same model (by name and width) as the one it is used with."""
    if prompt.shape[1] != d_model:
        raise PromptError(f"{path}: prompt width {prompt.shape[1]} does not fit the model's d_model {d_model}")
    if meta.get("model") and model_name and meta["model"] != model_name:
        raise PromptError(f"{path}: trained on {meta['model']}, not {model_name}; pass --model {meta['model']}")


# -----------------------------------------------------------------------------
# task prompt vectors: plain functions on tensors, each checking its operands

class Vector(NamedTuple):
    """A task prompt vector tau = tuned prompt - init, with what it may be combined with."""
    tau: torch.Tensor  # (n, d)
    model: str
    origin: str  # identifies the init: vectors add only onto the init they were computed from
    name: str


def init_key(init):
    import hashlib
    return hashlib.sha256(init.float().contiguous().numpy().tobytes()).hexdigest()[:16]


def vector(path):
    """The task prompt vector stored in a prompt file."""
    prompt, init, meta = load_prompt(path)
    name = meta.get("task", os.path.splitext(os.path.basename(path))[0])
    return Vector(prompt - init, meta.get("model", ""), init_key(init), name)


def check_compatible(a, b):
    if a.tau.shape != b.tau.shape:
        what = "width" if a.tau.shape[1] != b.tau.shape[1] else "length"
        raise PromptError(f"{a.name} and {b.name} differ in {what}: {tuple(a.tau.shape)} vs {tuple(b.tau.shape)}")
    if a.model and b.model and a.model != b.model:
        raise PromptError(f"{a.name} was trained on {a.model}, {b.name} on {b.model}: vectors of different models "
                          f"do not add")
    if a.origin != b.origin:
        raise PromptError(f"{a.name} and {b.name} were trained from different initial prompts (origins); task "
                          f"vectors only add on the origin they were computed from")


def add(*vectors):
    for v in vectors[1:]:
        check_compatible(vectors[0], v)
    first = vectors[0]
    return Vector(sum(v.tau for v in vectors), first.model, first.origin, "+".join(v.name for v in vectors))


def neg(a):
    return Vector(-a.tau, a.model, a.origin, f"-{a.name}")


def sub(a, b):
    check_compatible(a, b)
    return Vector(a.tau - b.tau, a.model, a.origin, f"{a.name}-{b.name}")


def scale(a, coefficient):
    return Vector(coefficient * a.tau, a.model, a.origin, f"{coefficient:g}*{a.name}")


def apply(init, v, lam=1.0, check_origin=True):
    """init + lam * tau (the paper's TaskPrompt.apply). check_origin=False is for the cross-origin experiment,
    which adds a vector from origin j onto origin i on purpose."""
    if check_origin and init_key(init) != v.origin:
        raise PromptError(f"{v.name} was computed from another initial prompt than the one it is applied to")
    if init.shape != v.tau.shape:
        raise PromptError(f"{v.name} has shape {tuple(v.tau.shape)}, the initial prompt {tuple(init.shape)}")
    return init + lam * v.tau
