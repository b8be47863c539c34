"""
A hand-written Llama decoder that computes exactly what Hugging Face's `LlamaForCausalLM` computes with the same
weights: Llama-3.1-8B-Instruct, Llama-3.2 (tied head, head_dim set) and DeepSeek-LLM-7B-Chat (Llama architecture,
multi-head attention) all load into it. Around the network: a soft prompt placed before the input tokens, greedy
decoding with a key/value cache on left-padded batches, scoring of label sequences, and the tokenizer (bpe.py).

References (the "why" of every quirk is cited at the line that implements it):
- Touvron et al. 2023 (LLaMA); Dubey et al. 2024, "The Llama 3 Herd of Models" (rope scaling, grouped queries).
- transformers `models/llama/modeling_llama.py` and `modeling_rope_utils.py` (v4.57), the oracle of our tests.
- PEFT `PeftModelForCausalLM` prompt tuning: the virtual tokens go before every input token, BOS included.

    model = load_llama("models/meta-llama/Llama-3.1-8B-Instruct", device="cuda", dtype=torch.bfloat16)
    logits = model(input_ids, attention_mask, prompt=prompt)     # (B, T, vocab)
"""
import math
import os
import shutil
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import data
from data import instruct
from support import bpe, files
from support import chat
from support import decoding
from support import layers
from support.weights import (POSITIVE, TOKEN_ID, CheckpointError, build, check_fields, json_text, load_weights,
                         model_file, model_folder, read_config, rule, save_weights)

# -----------------------------------------------------------------------------
# config: the field names are the keys of Hugging Face's config.json

TOKEN_IDS = rule(lambda v, cfg: v and all(type(i) is int and 0 <= i < cfg.vocab_size for i in v),
                 "of one or more token ids in [0, {vocab_size})")
RULES = {**dict.fromkeys(["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta",
                          "max_position_embeddings"], POSITIVE),
         **dict.fromkeys(["bos_token_id", "pad_token_id"], TOKEN_ID), "eos_token_id": TOKEN_IDS}
ROPE_TYPES = {"default": (), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                        "original_max_position_embeddings")}


@dataclass
class LlamaConfig:
    """Checked like T5Config: a wrong value in config.json fails here, naming the key, and the REQUIRED keys (the
    weights' shapes depend on them) must be there; num_key_value_heads and head_dim are derived when absent, as
    Hugging Face derives them."""
    REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: as many as num_attention_heads (multi-head attention)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads; Llama-3.2 sets it
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "llama3", "factor": 8.0, ...} for Llama 3.1
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False  # Llama-3.2-1B/3B tie the head to the input embedding
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: list | None = None  # config.json holds an int or a list (Llama 3.1: end of text, eom, eot)
    pad_token_id: int | None = None

    def __post_init__(self):
        if type(self.eos_token_id) is int:
            self.eos_token_id = [self.eos_token_id]
        check_fields(self, RULES)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                                  f"num_key_value_heads {self.num_key_value_heads}: every key/value head must serve "
                                  f"the same number of query heads")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise CheckpointError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                                      f"{self.num_attention_heads}, and no head_dim is given")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.head_dim % 2:
            raise CheckpointError(f"head_dim {self.head_dim} is odd: rotary positions rotate pairs of features")
        if self.hidden_act != "silu":
            raise CheckpointError(f"hidden_act {self.hidden_act!r} is not supported (Llama uses 'silu')")
        scaling = self.rope_scaling or {}
        kind = scaling.get("rope_type", scaling.get("type", "default"))  # older configs name it "type"
        if type(kind) is not str or kind not in ROPE_TYPES:
            raise CheckpointError(f"rope_scaling rope_type {json_text(kind)} is not implemented (tpv implements "
                                  f"{', '.join(ROPE_TYPES)})")
        bad = [k for k in ROPE_TYPES[kind] if type(scaling.get(k)) not in (int, float) or not scaling[k] > 0]
        if bad:
            raise CheckpointError(f"rope_scaling of type {kind} needs positive numbers for {', '.join(bad)}")
        if kind == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
            raise CheckpointError("rope_scaling's high_freq_factor must exceed its low_freq_factor (the frequencies "
                                  "between them are blended over that gap)")

    @classmethod
    def from_json(cls, path):
        return read_config(cls, path, ("llama",), "Llama (Llama 3, DeepSeek-LLM)")

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -----------------------------------------------------------------------------
# the network; module names make state_dict() keys equal Hugging Face's

class RMSNorm(layers.RMSNorm):
    """LlamaRMSNorm: T5's weight and eps, but the normalised x goes back to the input dtype *before* the scale."""

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)  # variance (B, T, 1) in fp32
        return self.weight * x.to(dtype)


def rope_frequencies(cfg, device):
    """The (head_dim / 2,) rotation frequencies, with Llama 3's scaling (modeling_rope_utils.py
    _compute_llama3_parameters): long wavelengths are slowed by `factor`, short ones kept, those between blended."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
    scaling = cfg.rope_scaling or {}
    if scaling.get("rope_type", scaling.get("type")) != "llama3":
        return inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_context / high) * ~(wavelen > old_context / low)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(cfg, positions, dtype):
    """(B, T) integer positions -> cos, sin (B, T, head_dim) in dtype; computed in fp32 as LlamaRotaryEmbedding
    does (its matmul of (dim/2, 1) by (1, T) is one product per element: the same as this outer product)."""
    frequencies = rope_frequencies(cfg, positions.device)  # (dim/2,)
    angles = positions[..., None].float() * frequencies  # (B, T, 1) * (dim/2,) -> (B, T, dim/2)
    angles = torch.cat([angles, angles], dim=-1)  # (B, T, dim): the two halves of a head share frequencies
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x, cos, sin):
    """modeling_llama.py apply_rotary_pos_emb: feature i pairs with i + dim/2 (the "rotate_half" layout of HF's
    converted checkpoints, not the interleaved pairs of Meta's original code)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]  # cos, sin (B, T, dim) -> (B, 1, T, dim) over the heads


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, H, KV, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(d, H * hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(d, KV * hd, bias=cfg.attention_bias)  # grouped-query: fewer key/value heads
        self.v_proj = nn.Linear(d, KV * hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(H * hd, d, bias=cfg.attention_bias)
        self.n_heads, self.n_kv_heads, self.head_dim = H, KV, hd

    def forward(self, x, cos, sin, bias, past_kv=None):
        """x (B, T, d) -> (B, T, d) and this layer's keys/values (B, KV, past+T, hd), the decoding cache.
        bias: None for a causal pass over right-padded rows, else an additive (B, 1, T, past+T) mask."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, T, H*hd) -> (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)  # (B, KV, past+T, hd)
        # softmax(q k^T / sqrt(hd) + bias) v: (B, H, T, hd) @ (B, H, hd, S) -> (B, H, T, S), @ (B, H, S, hd). Each
        # key/value head serves H/KV query heads (modeling_llama.py repeat_kv): SDPA's enable_gqa does it without
        # copies, but with a mask it falls back to the math kernel on CUDA (transformers sdpa_attention.py), so
        # masked passes (generation, scoring) repeat the heads themselves
        repeat = self.n_heads // self.n_kv_heads
        k_all, v_all = (k, v) if bias is None or repeat == 1 else (t.repeat_interleave(repeat, dim=1) for t in (k, v))
        out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=bias, is_causal=bias is None,
                                             scale=self.head_dim ** -0.5, enable_gqa=k_all.shape[1] != self.n_heads)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, H, T, hd) -> (B, T, H*hd)
        return self.o_proj(out), (k, v)  # (B, T, H*hd) @ (H*hd, d) -> (B, T, d)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        # SwiGLU (Shazeer 2020): (B, T, d) @ (d, ff) twice, gated, then (B, T, ff) @ (ff, d) -> (B, T, d)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    """Pre-norm residual block: self-attention, then the SwiGLU feed-forward."""

    def __init__(self, cfg):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, h, cos, sin, bias, past_kv=None):
        attended, kv = self.self_attn(self.input_layernorm(h), cos, sin, bias, past_kv)
        h = h + attended
        return h + self.mlp(self.post_attention_layernorm(h)), kv


class Decoder(nn.Module):
    """LlamaModel: the embedding, the layers and the final norm (HF's `model.` prefix of every key)."""

    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)  # not scaled by sqrt(d), unlike Gemma
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Llama(nn.Module):
    family = "llama"

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.checkpointing = False  # --checkpointing: recompute each layer in the backward pass
        self.tie_weights()

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def dtype(self):
        return self.model.embed_tokens.weight.dtype

    @property
    def width(self):
        return self.config.hidden_size  # the width of a prompt vector

    def input_embedding(self):
        return self.model.embed_tokens.weight  # (V, d): origins are rows of it

    def embed(self, input_ids, attention_mask=None, prompt=None):
        """(B, T) ids [+ soft prompt (n, d) or (B, n, d)] -> embeddings (B, n+T, d) and their mask (B, n+T)."""
        B = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = self.model.embed_tokens(input_ids)  # (B, T, d)
        if prompt is not None:  # PEFT prompt tuning: prepend, mask ones; cast where the fp32 prompt joins bf16 weights
            prompt = layers.check_prompt(prompt, B, self.width).to(h.dtype)
            h = torch.cat([prompt.expand(B, -1, -1), h], dim=1)  # (B, n+T, d)
            attention_mask = torch.cat([attention_mask.new_ones(B, prompt.shape[-2]), attention_mask], dim=1)
        return h, attention_mask

    def run(self, h, positions, bias, cache=None):
        """Embeddings (B, T, d) at positions (B, T) -> final hidden states (B, T, d). cache: None, or a list of
        per-layer (k, v) (None before the first call), updated in place."""
        cos, sin = rope_cos_sin(self.config, positions, h.dtype)
        for i, layer in enumerate(self.model.layers):
            past = cache[i] if cache is not None else None
            if self.checkpointing and self.training and torch.is_grad_enabled():
                h, kv = checkpoint(layer, h, cos, sin, bias, past, use_reentrant=False)
            else:
                h, kv = layer(h, cos, sin, bias, past)
            if cache is not None:
                cache[i] = kv
        return self.model.norm(h)

    def states(self, input_ids, attention_mask=None, prompt=None):
        """Final hidden states (B, n+T, d) of the prompt's n positions and the T tokens."""
        h, mask = self.embed(input_ids, attention_mask, prompt)
        right_padded = bool((mask.cummin(dim=1).values == mask).all())  # ones, then only pads
        # right padding needs no mask: a causal token never sees the pads after it (and the fused causal kernel
        # is the fastest); any other padding gets the causal mask and the key mask, as the most negative float
        # and not -inf: a left pad's query row, with nothing allowed, stays finite instead of spreading NaN (as HF)
        bias = None if right_padded else layers.additive_mask(causal(mask), h.dtype)
        return self.run(h, positions_from(mask), bias)

    def forward(self, input_ids, attention_mask=None, prompt=None):
        h = self.states(input_ids, attention_mask, prompt)[:, -input_ids.shape[1]:]  # the T token positions
        # contiguous: on a strided slice the projection falls back to a batched matmul (bmm), slower in the backward
        return self.lm_head(h.contiguous())  # (B, T, d) @ (d, V) -> (B, T, V)


def token_losses(model, input_ids, attention_mask, labels, prompt, shared=0):
    """(B, T) cross-entropy of each label token given everything before it, 0 where the label is -100; in fp32.

    As a causal LM's loss with PEFT prompt tuning: token t is predicted from the state at the position before it,
    so the first token (begin-of-text) is predicted from the prompt's last vector. prompt: (n, d), or (R, n, d) for
    R groups of rows (prompt_groups). The first `shared` tokens, the same in every row with the same labels (the
    shared prefix, data.shared_start), are computed once per prompt with it (prefix), their loss too; each row's
    rest attends to them. The vocabulary projection is made at the shared tokens (once per prompt) and at each row's
    own tokens where there is a label (with --loss answer, a few tokens of the sequence).
    """
    if prompt is None:
        raise ValueError("token_losses needs a prompt: the first token is predicted from its last vector")
    B, n = input_ids.shape[0], prompt.shape[-2]
    states, cache = prefix(model, prompt, input_ids[0, :shared], B)  # (R, n+P, d)
    rest = read(model, input_ids[:, shared:], attention_mask[:, shared:], cache)[0]  # (B, T-P, d)
    R = states.shape[0]
    losses = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    # the shared tokens, predicted once per prompt from the states before them (R, P, d), their labels the same in
    # every row (P,): all of them with --loss full, none with --loss answer (-100; no boolean indexing, which would
    # wait for the GPU)
    logits = model.lm_head(states[:, n - 1:-1])  # (R, P, d) @ (d, V) -> (R, P, V)
    once = F.cross_entropy(logits.float().flatten(0, 1), labels[0, :shared].repeat(R), ignore_index=-100,
                           reduction="none").view(R, shared)
    losses[:, :shared] = once.repeat_interleave(B // R, dim=0)  # each prompt's rows
    # each row's own tokens: the first predicted from the shared prefix's last state, the others from the row's
    before = torch.cat([states[:, -1:].repeat_interleave(B // R, dim=0), rest[:, :-1]], dim=1)  # (B, T-P, d)
    picked = labels[:, shared:] != -100  # (B, T-P)
    logits = model.lm_head(before[picked])  # (N, d) @ (d, V) -> (N, V)
    losses[:, shared:][picked] = F.cross_entropy(logits.float(), labels[:, shared:][picked], reduction="none")
    return losses


def prompt_groups(prompt, rows, d):
    """A soft prompt (n, d), or (R, n, d) with R dividing the batch's rows (prompt r serves the rows r*B/R to
    (r+1)*B/R - 1, prompt-major as layers.rows_per_prompt makes them) -> (R, n, d)."""
    if prompt.dim() == 2:
        prompt = prompt[None]
    if prompt.dim() != 3 or rows % prompt.shape[0] or prompt.shape[-1] != d:
        raise ValueError(f"prompt must be (n, {d}) or (R, n, {d}) with R dividing the {rows} rows, got "
                         f"{tuple(prompt.shape)}")
    return prompt


def prefix(model, prompt, shared_ids, rows):
    """The start every row of a group shares, computed once per group: its soft prompt (R, n, d) (or None: one
    group) and the shared ids (P,) -> the states (R, n+P, d) (None if empty) and the cache of every layer's keys and
    values (rows, KV, n+P, hd), repeated for the rows of each group (their gradients meet in the group's)."""
    h = model.model.embed_tokens(shared_ids)[None]  # (1, P, d)
    if prompt is not None:  # cast where the fp32 prompt joins bf16 weights
        prompt = prompt_groups(prompt, rows, model.width).to(h.dtype)
        h = torch.cat([prompt, h.expand(prompt.shape[0], -1, -1)], dim=1)  # (R, n+P, d)
    cache = [None] * model.config.num_hidden_layers
    if h.shape[1] == 0:
        return None, cache
    positions = torch.arange(h.shape[1], device=h.device).expand(h.shape[0], -1)  # (R, n+P): no pads
    states = model.run(h, positions, None, cache)  # causal: the shared start sees only itself
    return states, [tuple(t.repeat_interleave(rows // h.shape[0], dim=0) for t in kv) for kv in cache]


def read_inputs(model, input_ids, attention_mask, prompt, shared):
    """Generation's and scoring's pass over the inputs: the prompt and the first `shared` tokens once per prompt
    (prefix), then each row's own tokens (read) -> their states (B, T-P, d), the key mask, positions, the cache."""
    check_shared(input_ids, attention_mask, shared)
    cache = prefix(model, prompt, input_ids[0, :shared], input_ids.shape[0])[1]
    own_mask = None if attention_mask is None else attention_mask[:, shared:]
    return (*read(model, input_ids[:, shared:], own_mask, cache), cache)


def check_shared(input_ids, attention_mask, shared):
    """Evaluation's check that the first `shared` tokens are real and the same in every row (training trusts
    collate_causal, to keep the step free of waits for the GPU)."""
    start = input_ids[:, :shared]
    if not ((start == start[:1]).all() and (attention_mask is None or attention_mask[:, :shared].all())):
        raise ValueError(f"the first {shared} tokens are not the same real tokens in every row (data.shared_start)")


def read(model, input_ids, attention_mask, cache):
    """The rows' own tokens (B, T) after what the cache holds (prefix, or nothing) -> their final hidden states
    (B, T, d), the key mask (B, K) over everything read, its positions (B, K); the cache grows by the T tokens.
    Padding anywhere (the training batch's on the right, the evaluation batch's between prefix and rows) is masked,
    and positions count only real tokens, so each row is computed as it would be alone."""
    B = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    before = 0 if cache[0] is None else cache[0][0].shape[2]
    mask = torch.cat([attention_mask.new_ones(B, before), attention_mask], dim=1)  # (B, K)
    positions = positions_from(mask)
    h = model.model.embed_tokens(input_ids)  # (B, T, d)
    # the causal mask and the key mask, as the most negative float and not -inf: a pad's query row, with nothing
    # allowed, stays finite instead of spreading NaN (as HF)
    bias = layers.additive_mask(causal(mask, input_ids.shape[1]), h.dtype)  # (B, 1, T, K)
    return model.run(h, positions[:, before:], bias, cache), mask, positions


def pad_id(cfg):
    """The id written on padding (masked, so any id does): the pad token, else the first end token."""
    return cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id or [0])[0]


def positions_from(mask):
    """Positions from the mask, as transformers' generate does: each row counts only its real tokens (left pads
    do not shift them), so a padded row is computed as it would be alone. Pads get 1 (prepare_inputs_for_generation)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)  # (B, T)


def causal(mask, n_queries=None):
    """(B, K) key mask -> (B, 1, Q, K) bool: the last Q positions each see the keys at or before them."""
    K = mask.shape[1]
    Q = K if n_queries is None else n_queries
    query = torch.arange(K - Q, K, device=mask.device)  # (Q,)
    allowed = torch.arange(K, device=mask.device)[None, :] <= query[:, None]  # (Q, K)
    return allowed[None, None] & mask[:, None, None, :].bool()  # (1, 1, Q, K) & (B, 1, 1, K)


# -----------------------------------------------------------------------------
# decoding and scoring (used by evaluation)

@torch.no_grad()
def generate_greedy(model, input_ids, attention_mask=None, prompt=None, max_new_tokens=16, shared=0):
    """Greedy decoding with a key/value cache on a left-padded batch: (B, S) -> (B, <= max_new_tokens) new ids,
    pad (or EOS when the model has no pad id) after each end token. Same output as Hugging Face `generate(
    do_sample=False)` with the prompt prepended to every row as PEFT does. prompt: (n, d) or (R, n, d) for R groups
    of rows; the first `shared` tokens are the same in every row (data.collate_prefixes), computed once per prompt."""
    cfg = model.config
    hidden, mask, positions, cache = read_inputs(model, input_ids, attention_mask, prompt, shared)

    def next_logits(step, token):
        nonlocal hidden, mask, positions
        if token is not None:  # the inputs were read above (their keys/values are in the cache); then one token a step
            mask = torch.cat([mask, token.new_ones(token.shape[0], 1)], dim=1)  # (B, K+1)
            positions = positions[:, -1:] + 1  # (B, 1)
            bias = layers.additive_mask(causal(mask, 1), hidden.dtype)  # (B, 1, 1, K+1)
            hidden = model.run(model.model.embed_tokens(token), positions, bias, cache)  # (B, 1, d)
        return model.lm_head(hidden[:, -1])  # (B, d) @ (d, V) -> (B, V)
    return decoding.greedy(next_logits, input_ids.shape[0], input_ids.device, max_new_tokens, cfg.eos_token_id or [],
                           pad_id(cfg))


def score_candidates(model, input_ids, attention_mask, prompt, candidates, shared=0):
    """Log-probability of each candidate continuation: (B, S) left-padded inputs, C token lists -> (B, C).

    One pass over the inputs (keeping their keys/values; the prompt and the first `shared` tokens once per prompt,
    as generate_greedy) and one over the candidates packed side by side: each candidate token sees the input and its
    own earlier tokens (block-diagonal causal mask), at the positions it would have if decoded alone, so every
    candidate is scored exactly as if it followed the input by itself.
    """
    hidden, mask, positions, cache = read_inputs(model, input_ids, attention_mask, prompt, shared)
    last = hidden[:, -1]  # (B, d): the state that predicts each candidate's token 0
    tokens, offset, seg, own = decoding.pack(candidates, input_ids.device)  # (L,) x 3, (L, L) block-diagonal causal
    B, L = input_ids.shape[0], len(tokens)
    # token i of a candidate is predicted from token i-1's hidden state; token 0's from the input's last position
    inputs = tokens.expand(B, -1)  # (B, L) every token is fed in; the last of each candidate predicts nothing used
    # (B, 1, L, K) the input's real tokens, beside (B, 1, L, L) the candidate's own: -> (B, 1, L, K+L)
    allowed = torch.cat([mask.bool()[:, None, None, :].expand(B, 1, L, -1), own.expand(B, 1, L, L)], dim=-1)
    hidden = model.run(model.model.embed_tokens(inputs), positions[:, -1:] + 1 + offset,
                       layers.additive_mask(allowed, last.dtype), cache)  # (B, L, d)
    previous = torch.cat([last[:, None], hidden[:, :-1]], dim=1)  # (B, L, d): the state before each token
    first = offset == 0
    previous[:, first] = last[:, None]  # (B, 1, d) into (B, C, d): each candidate starts after the input
    token_logp = model.lm_head(previous).float().log_softmax(-1).gather(-1, inputs[..., None])[..., 0]  # (B, L)
    return decoding.per_candidate(token_logp, seg, len(candidates))


# -----------------------------------------------------------------------------
# loading Hugging Face checkpoints, and the tokenizer

def load_llama(path, device="cpu", dtype=torch.float32):
    """A Hugging Face Llama folder (config.json + safetensors) -> Llama in eval mode, every weight frozen."""
    cfg = LlamaConfig.from_json(model_file(model_folder(path), "config.json", "the model config"))
    tied = ["model.embed_tokens.weight", "lm_head.weight"] if cfg.tie_word_embeddings else []
    return load_weights(build(Llama, cfg), path, device, dtype, tied)


def save_llama(model, folder):
    """model.safetensors and config.json in Hugging Face's format (load_llama and transformers read them back)."""
    cfg = model.config.to_dict()
    cfg["eos_token_id"] = cfg["eos_token_id"][0] if len(cfg["eos_token_id"] or []) == 1 else cfg["eos_token_id"]
    save_weights(model, folder, {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **cfg})


class Tokenizer(bpe.Tokenizer):
    """Byte-level BPE (bpe.py) and the model's chat format (chat.py), in which an example becomes chat text."""

    example_limit = instruct.MAX_LENGTH
    chat_refusal = None  # why chat_format is None, when tokenizer_config.json names no format tpv writes

    def chat(self):
        """The chat format's name; a tokenizer without one (no tokenizer_config.json, an unknown chat_template)
        encodes text, and is refused in one line only here, where an example would become chat text."""
        if self.chat_format is None:
            raise chat.ChatError(self.chat_refusal or f"{self.model_file}: no tokenizer_config.json with a chat "
                                 f"template beside it; tpv writes the tasks in the model's chat format, so copy the "
                                 f"model's tokenizer_config.json there")
        return self.chat_format

    def encode_example(self, task, row, max_source=None):
        """A task's example -> (chat prefix ids, answer ids, whether it is longer than instruct.MAX_LENGTH: the
        batches cut it, by --loss). max_source is T5's: the chat text is cut as a whole."""
        ids, answer = instruct.example_ids(self, self.chat(), task, row)
        return ids, answer, len(ids) + len(answer) > instruct.MAX_LENGTH


def load_tokenizer(path):
    """A folder holding tokenizer.json (and tokenizer_config.json), or the tokenizer.json itself -> Tokenizer,
    with the chat format its tokenizer_config.json's template names (chat.py; None without that file, or with a
    template tpv does not know: encode and decode work all the same, encode_example refuses)."""
    tokenizer = bpe.load_tokenizer(path, Tokenizer)
    config = os.path.join(os.path.dirname(tokenizer.model_file), "tokenizer_config.json")
    if os.path.isfile(config):
        try:
            tokenizer.chat_format = chat.chat_format(config)
        except chat.ChatError as e:
            tokenizer.chat_refusal = str(e)
    return tokenizer


# -----------------------------------------------------------------------------
# the family interface (families.py): what the loop, evaluation and the command line ask of a decoder-only model

FAMILY, NAME, PEFT_TASK_TYPE = "llama", "Llama (Llama 3, DeepSeek-LLM)", "CAUSAL_LM"
OPTIONS = ("checkpointing", "loss")  # recompute layers in the backward; the loss over the chat text or the answer
# run.sh's defaults: the paper's LLM runs (v3, Llama-3.1-8B-Instruct and DeepSeek-LLM-7B-Chat): 3 origins, and the
# tasks of its LLM cross-origin table that tpv has (all but SQuADv2 and MATH; v2's Llama runs had the first 6)
GRID = {"origins": "0-2", "tasks": ("mnli", "qnli", "sst2", "yelp_polarity", "dbpedia", "trec", "qqp", "mrpc", "rte",
                                    "cola", "stsb")}
load = load_llama


def recipe_defaults(task):
    """The official LLM runs (llama31_8b_instruct.toml, per-task tomls): 100 vectors, batch 4, cosine schedule with
    3 % warm-up, validation at every tenth of the run, 10 epochs (TREC 20)."""
    return {"epochs": 20 if task == "trec" else 10, "batch_size": 4, "prompt_len": 100, "schedule": "cosine",
            "warmup_ratio": 0.03, "eval_every": None}


def batch_maker(model, tokenizer, loss):
    """The chat text of each example, its labels by --loss (data/instruct.py)."""
    tail = instruct.tail_length(tokenizer, tokenizer.chat())
    return lambda tokens, idx: data.collate_causal(tokens, idx, pad_id(model.config), loss, tail)


def run_losses(model, prompts, batch):
    """prompts (R, n, d), a batch of B chat texts -> (R,) summed cross-entropy of each prompt over its own copy of
    the batch: each label token given the prompt and the tokens before it (token_losses), the batch's shared start
    once per prompt."""
    shared, rows = batch["shared_ids"].numel(), {k: v for k, v in batch.items() if k != "shared_ids"}
    rows = layers.rows_per_prompt(rows, prompts)[0]  # (R*B, L), prompt-major
    token_loss = token_losses(model, rows["input_ids"], rows["attention_mask"], rows["labels"], prompts, shared)
    return token_loss.view(prompts.shape[0], -1).sum(1)  # (R,)


def label_words(task):
    """What the chat model answers: the task's label words with spaces; STS-B's scores on a 0.2 grid."""
    return task.words


def predict_words(model, tokenizer, task, tokens, idx, prompts, scoring="generate", max_new_tokens=None):
    """The label words predicted for examples idx with each of R prompts (R, n, d) (None: the model alone): the
    reply generated after the chat prefix matched to the task's label words (instruct.label_of), or the best-scoring
    answer (scoring="rank"); the prefixes' shared start once per prompt. -> R lists of len(idx) words, in T5's
    spelling for the metrics."""
    batch = data.collate_prefixes(tokens, idx, pad_id(model.config))
    shared = batch.pop("shared_ids").numel()
    batch = {k: v.to(model.lm_head.weight.device) for k, v in batch.items()}
    rows = layers.rows_per_prompt(batch, prompts)[0]  # (R*B, S), prompt-major
    ids, mask = rows["input_ids"], rows["attention_mask"]
    if scoring == "rank":  # the answers as the chat writes them after the prefix, e.g. "not entailment<|eot_id|>"
        candidates = [instruct.answer_ids(tokenizer, tokenizer.chat(), w) for w in task.words]
        scores = score_candidates(model, ids, mask, prompts, candidates, shared)  # (R*B, C)
        words = [(task.labels or task.words)[j] for j in scores.argmax(-1).tolist()]
    else:
        out = generate_greedy(model, ids, mask, prompts, max_new_tokens or instruct.MAX_NEW_TOKENS, shared)
        words = [instruct.label_of(task, tokenizer.decode(row).strip()) for row in out.tolist()]
    return [words[r:r + len(idx)] for r in range(0, len(words), len(idx))]


def inference_rows(model, device, prompt_len, validation=False):
    """Validation logits cover the whole chat text (64 x 512 x 128,256 would not fit beside an 8B model): 8 rows,
    the official eval batch; greedy evaluation 64."""
    return 8 if validation else 64


def largest_pack(cfg, batch_size, source_len, target_len, dtype, budget):
    """1: no activation estimate for decoder-only models yet; a 7-8B model trains one run per step unless --pack."""
    return 1


def describe(model):
    cfg, count = model.config, lambda module: sum(p.numel() for p in module.parameters())
    head = "" if cfg.tie_word_embeddings else f", lm_head {model.lm_head.weight.numel():,}"
    return [f"parameters {count(model):,} in all: embedding {model.input_embedding().numel():,}, layers "
            f"{count(model.model.layers):,}" + head,
            f"attention  {cfg.num_attention_heads} query heads, {cfg.num_key_value_heads} key/value heads of "
            f"{cfg.head_dim}; rope theta {cfg.rope_theta:g}, scaling {cfg.rope_scaling}; tied head "
            f"{cfg.tie_word_embeddings}"]


def tiny_model(tokenizer_file, seed):
    """A random 2-layer Llama of width 32 with the vocabulary of a tokenizer.json (tpv.py tiny-model --family llama
    --tokenizer) and its tokenizer_config.json."""
    tokenizer, tokenizer_config = tiny_tokenizer(tokenizer_file)
    torch.manual_seed(seed)
    ids = {key: tokenizer.token_to_id(tokenizer_config[key]) for key in ("bos_token", "eos_token")}
    model = Llama(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              bos_token_id=ids["bos_token"], eos_token_id=ids["eos_token"]))

    def write(folder):
        save_llama(model, folder)
        files.write_json(os.path.join(folder, "tokenizer_config.json"), tokenizer_config)
        shutil.copyfile(tokenizer.model_file, os.path.join(folder, "tokenizer.json"))
    return model, write


def tiny_tokenizer(path):
    """A tokenizer.json for a tiny Llama, and its tokenizer_config.json: the one beside it, or (the Llama 3
    vocabulary alone, as in ../shared/assets) Llama 3's special tokens and a chat template of its format."""
    if not path:
        raise CheckpointError("tiny-model --family llama needs --tokenizer FILE (a byte-level BPE tokenizer.json)")
    tokenizer = load_tokenizer(path)  # a vocabulary that loads, before anything is written
    beside = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    if os.path.isfile(beside):
        config = files.read_json(beside)
        chat.chat_format(config)  # a format tpv implements
    elif all(tokenizer.token_to_id(t) is not None for t in chat.LLAMA3_SPECIAL.values()):
        config = {**chat.LLAMA3_SPECIAL, "chat_template": chat.LLAMA3_SHORT_TEMPLATE}
    else:
        raise CheckpointError(f"{path}: no tokenizer_config.json beside it, and not Llama 3's vocabulary; put the "
                              f"model's tokenizer_config.json (its chat template) next to it")
    return tokenizer, config
