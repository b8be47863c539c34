"""
The paper's method (Belanec et al., arXiv 2408.01119, §3), in this file and nowhere else:

    origin_i                    a starting prompt: rows of the model's input embedding for token ids drawn from
                                [0, 5000) by the official recipe (origin_token_ids, origin_prompt)
    tau = prompt - init         a task prompt vector: what tuning added to the prompt it started from (vector)
    new = origin + lam * sum    vectors of several tasks added onto the origin they came from (add, apply)

Vectors add only on the origin they were computed from: `check_same_origin` is the one place that checks it.
Names: `origin` is the paper's theta_0 (origin_i); `init` is where one run's tuning started (an origin, an
origin plus task vectors, or another initialisation).

A prompt file is one safetensors file holding `prompt` (the tuned prompt) and `init`, both float32 (n, d), plus
string metadata, so that tau is recoverable from the file alone (PEFT never saves the init).
"""
import json
import math
import os
from typing import NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from support import files

FORMAT_VERSION = "2"  # 2: every writer records the same metadata keys (task, model, origin, init); 1 still loads
READABLE_VERSIONS = ("1", "2")
N_ORIGINS = 10
ORIGIN_IDS = 5000  # origins draw from token ids [0, 5000) (official scripts/create_origin.py)


class PromptError(ValueError):
    """A prompt file or initialisation the user asked for cannot be used; the message says why and how to fix."""


# -----------------------------------------------------------------------------
# task prompt vectors: tau = prompt - init, and their sums

OLD_FILES_FAMILY = "t5"  # what a prompt file written before the Llama family holds: a T5 prompt


class Vector(NamedTuple):
    """A task prompt vector and what it may be combined with."""
    tau: torch.Tensor  # (n, d)
    init: torch.Tensor  # (n, d): the prompt tuning started from; vectors add only onto the same one
    model: str
    name: str
    family: str = OLD_FILES_FAMILY


def vector(prompt, init, model="", name="", family=OLD_FILES_FAMILY):
    """The paper's task prompt vector: tau = tuned prompt - its initialisation (element-wise, no scaling)."""
    return Vector(prompt - init, init, model, name, family)


def load_vector(path):
    """The task prompt vector stored in a prompt file."""
    prompt, init, meta = load_prompt(path)
    return vector(prompt, init, meta.get("model", ""), meta.get("task", os.path.splitext(os.path.basename(path))[0]),
                  meta["family"])


def check_same_origin(name, init, origin, where="the initial prompt it is added to"):
    """Task vectors only add on the origin they were computed from (paper §3: origin_i + sum of tau_i)."""
    if init.shape != origin.shape or not torch.equal(init, origin):
        raise PromptError(f"{name} was not trained from {where} but from another initial prompt; task vectors of "
                          f"different initial prompts do not add (only on the origin they were computed from)")


def check_compatible(a, b):
    if a.family != b.family:
        raise PromptError(f"{a.name} is a prompt of a {a.family} model, {b.name} of a {b.family} model: vectors of "
                          f"different model families do not add")
    if a.tau.shape != b.tau.shape:
        what = "width" if a.tau.shape[1] != b.tau.shape[1] else "length"
        raise PromptError(f"{a.name} and {b.name} differ in {what}: {tuple(a.tau.shape)} vs {tuple(b.tau.shape)}")
    if a.model and b.model and os.path.normpath(a.model) != os.path.normpath(b.model):  # DIR/ is DIR
        raise PromptError(f"{a.name} was trained on {a.model}, {b.name} on {b.model}: vectors of different models "
                          f"do not add")
    check_same_origin(b.name, b.init, a.init, f"the initial prompt of {a.name}")


def add(*vectors):
    """tau_a + tau_b + ...: the sum the paper adds onto an origin."""
    for v in vectors[1:]:
        check_compatible(vectors[0], v)
    first = vectors[0]
    return first._replace(tau=sum(v.tau for v in vectors), name="+".join(v.name for v in vectors))


def neg(a):
    return a._replace(tau=-a.tau, name=f"-{a.name}")


def scale(a, coefficient):
    return a._replace(tau=coefficient * a.tau, name=f"{coefficient:g}*{a.name}")


def sub(a, b):
    return add(a, neg(b))._replace(name=f"{a.name}-{b.name}")


def apply(origin, v, lam=1.0, check_origin=True, origin_name="the initial prompt it is added to"):
    """origin + lam * tau (the paper's TaskPrompt.apply). check_origin=False is for the cross-origin experiment,
    which adds a vector from origin j onto origin i on purpose."""
    if origin.shape != v.tau.shape:
        raise PromptError(f"{v.name} has shape {tuple(v.tau.shape)}, the initial prompt {tuple(origin.shape)}")
    if check_origin:
        check_same_origin(v.name, v.init, origin, origin_name)
    return origin + lam * v.tau


# -----------------------------------------------------------------------------
# initialisations

def origin_token_ids(index, n):
    """The paper's origin_<index> (official scripts/create_origin.py): np.random.seed(1024) once, then the
    index-th successive permutation of the ids [0, 5000); the encoder prompt takes its first n ids."""
    if not 0 <= index < N_ORIGINS:
        raise PromptError(f"origin must be 0..{N_ORIGINS - 1}, got {index}")
    if n > ORIGIN_IDS:
        raise PromptError(f"--prompt-len {n} is more than an origin holds ({ORIGIN_IDS} distinct token ids); "
                          f"use at most {ORIGIN_IDS}, or --init random / vocab")
    rng = np.random.RandomState(1024)  # legacy MT19937: the same stream as the official np.random.seed(1024)
    for _ in range(index + 1):
        permutation = rng.permutation(ORIGIN_IDS)
    return torch.from_numpy(permutation[:n].copy())


def embedding_rows(model, ids):
    embedding = model.input_embedding()  # (V, d)
    return embedding[ids.to(embedding.device)].detach().float().cpu().clone()  # (n, d)


def origin_prompt(model, index, n):
    """origin_<index>: (n, d) float32 rows of the model's input embedding."""
    if model.config.vocab_size < ORIGIN_IDS:
        raise PromptError(f"the model's vocabulary has {model.config.vocab_size} tokens, but origins use token ids "
                          f"below {ORIGIN_IDS}; use --init random or vocab with this model")
    return embedding_rows(model, origin_token_ids(index, n))


def initial_prompt(model, tokenizer, spec, n, seed=0):
    """random | vocab | text:... -> (n, d) float32 on the CPU. (Origins: origin_prompt; files and sums of task
    vectors are resolved by runs.resolve_init, which knows where runs live.)"""
    d = model.width
    g = torch.Generator().manual_seed(seed)
    if spec == "random":  # PEFT's RANDOM: nn.Embedding's N(0, 1) init (off the vocabulary manifold)
        return torch.randn(n, d, generator=g)
    if spec == "vocab":  # PEFT's SAMPLE_VOCAB: rows of uniformly drawn token ids
        return embedding_rows(model, torch.randint(0, model.config.vocab_size, (n,), generator=g))
    if spec.startswith("text:"):  # PEFT's TEXT: the text's token embeddings, repeated and cut to n
        ids = tokenizer.encode(spec[5:])
        ids = (ids * math.ceil(n / len(ids)))[:n]
        return embedding_rows(model, torch.tensor(ids))
    raise PromptError(f"unknown --init {spec!r}: use origin, random, vocab, text:\"...\", a prompt file, or "
                      f"task[+task]")


# -----------------------------------------------------------------------------
# prompt files

def save_prompt(path, prompt, init, meta):
    """Writes path atomically; refuses non-finite tensors (nothing non-finite is ever saved)."""
    prompt, init = prompt.detach().float().cpu().clone(), init.detach().float().cpu().clone()  # never shared
    if not (torch.isfinite(prompt).all() and torch.isfinite(init).all()):
        raise PromptError(f"refusing to save a non-finite prompt to {path}")
    metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in {**meta, "version": FORMAT_VERSION}.items()}
    files.atomic_write(path, lambda tmp: save_file({"prompt": prompt, "init": init}, tmp, metadata=metadata))


def load_prompt(path):
    """-> (prompt, init, metadata), each checked."""
    if not os.path.isfile(path):
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
    if meta.get("version", "1") not in READABLE_VERSIONS:
        raise PromptError(f"{path}: prompt file version {meta['version']}, this tpv reads {READABLE_VERSIONS}; "
                          f"update tpv")
    if not (prompt.is_floating_point() and init.is_floating_point()):
        raise PromptError(f"{path}: prompt and init must be float tensors, found {prompt.dtype} and {init.dtype}")
    if prompt.dim() != 2 or prompt.shape != init.shape:
        raise PromptError(f"{path}: prompt {tuple(prompt.shape)} and init {tuple(init.shape)} must be equal (n, d)")
    if not (torch.isfinite(prompt).all() and torch.isfinite(init).all()):
        raise PromptError(f"{path}: holds NaN or infinite values")
    return prompt.float(), init.float(), {"family": OLD_FILES_FAMILY, **meta}


def check_fits(path, prompt, meta, model_name, model):
    """A prompt file must come from the same model (by family, name and width) as the one it is used with."""
    family = meta.get("family", OLD_FILES_FAMILY)  # meta may come from an adapter that names none
    if family != model.family:
        raise PromptError(f"{path}: a prompt of a {family} model ({meta.get('model', 'unknown')}), but the model is "
                          f"a {model.family} model: prompts do not carry over between model families; pass the "
                          f"--model it was trained on")
    if prompt.shape[1] != model.width:
        raise PromptError(f"{path}: prompt width {prompt.shape[1]} does not fit the model's width {model.width}")
    trained_on = meta.get("model") and os.path.normpath(meta["model"])
    if trained_on and model_name and trained_on != os.path.normpath(model_name):
        raise PromptError(f"{path}: trained on {meta['model']}, not {model_name}; pass --model {meta['model']}")
