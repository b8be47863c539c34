"""
A hand-written T5 encoder-decoder that computes exactly what Hugging Face's `T5ForConditionalGeneration`
computes with the same weights, plus what prompt tuning needs around it: strict loading of Hugging Face
safetensors checkpoints, a soft prompt prepended to the encoder input, greedy decoding with a key/value
cache, scoring of label sequences, and the sentencepiece tokenizer.

References (the "why" of every quirk is cited at the line that implements it):
- Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer".
- transformers `models/t5/modeling_t5.py` (v4.57), the numerical oracle of our tests.
- Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning" (the soft prompt).

    model = load_t5("models/t5-base")
    logits = model(input_ids, decoder_input_ids, attention_mask, prompt=prompt)   # (B, T_dec, vocab)
"""
import math
import os
import re
import shutil
from dataclasses import dataclass, fields

import sentencepiece
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from support import decoding, devices
from support.layers import RMSNorm, additive_mask, check_prompt, rows_per_prompt, set_dropout
from support.weights import (FRACTION, POSITIVE, TOKEN_ID, CheckpointError, build, check_dtype, check_fields,
                         load_weights, model_file, model_folder, read_config, save_weights)


# -----------------------------------------------------------------------------
# config: the field names are the keys of Hugging Face's config.json

RULES = {**dict.fromkeys(["vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                          "relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon"],
                         POSITIVE),
         "dropout_rate": FRACTION,
         **dict.fromkeys(["pad_token_id", "eos_token_id", "decoder_start_token_id"], TOKEN_ID)}


@dataclass
class T5Config:
    """Every field is checked against its type and its rule in RULES, so that a config.json with a wrong value fails
    here, naming the key, and not later inside torch (or silently: "false" is a true string). A config.json must
    hold the REQUIRED keys (read_config): the weights' shapes depend on them. The defaults serve Python callers
    (tiny_model) and the keys old configs lack (feed_forward_proj: T5 v1.0's relu; num_decoder_layers: as many as
    num_layers, as Hugging Face derives them)."""
    REQUIRED = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets")
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None  # None: as many as num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # "relu" (T5 v1.0) or "gated-gelu" (v1.1, LM-adapted, Flan)
    dense_act_fn: str | None = None  # derived from feed_forward_proj when absent, as configuration_t5.py does
    is_gated_act: bool | None = None
    tie_word_embeddings: bool = True  # PretrainedConfig's default; v1.0 ties, v1.1 and Flan do not
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self):
        check_fields(self, RULES)
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        # configuration_t5.py: "gated-gelu" -> gated, act "gelu_new" (kept for backward compatibility)
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise CheckpointError(f"feed_forward_proj {self.feed_forward_proj!r} is not 'ACT' or 'gated-ACT'")
        act = "gelu_new" if self.feed_forward_proj == "gated-gelu" else parts[-1]
        if self.dense_act_fn is None:
            self.dense_act_fn = act
        if self.is_gated_act is None:
            self.is_gated_act = parts[0] == "gated"
        if self.dense_act_fn not in ACTIVATIONS:
            raise CheckpointError(f"activation {self.dense_act_fn!r} is not supported "
                                  f"(known: {', '.join(ACTIVATIONS)})")

    @classmethod
    def from_json(cls, path):
        return read_config(cls, path, ("t5", "mt5"), "T5")

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}


def gelu_new(x):
    # activations.py NewGELUActivation: the tanh approximation of GELU used by Google's gated-gelu T5s
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS = {"relu": F.relu, "gelu_new": gelu_new, "gelu": F.gelu, "silu": F.silu,
               "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


# -----------------------------------------------------------------------------
# the network; module names make state_dict() keys equal Hugging Face's

class Attention(nn.Module):
    def __init__(self, cfg, has_relative_bias):
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv  # may differ from d_model (flan-t5-small: 6 heads x 64 = 384 < 512)
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        if has_relative_bias:  # only block 0 owns the table; its bias is shared by every block of the stack
            self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)
        self.n_heads, self.d_kv, self.dropout_rate = cfg.num_heads, cfg.d_kv, cfg.dropout_rate

    def split_heads(self, x):
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_kv).transpose(1, 2)  # (B, T, H*dk) -> (B, H, T, dk)

    def keys_values(self, x):
        return self.split_heads(self.k(x)), self.split_heads(self.v(x))  # 2 x (B, H, S, dk)

    def forward(self, x, k, v, bias):
        """x (B, T, d) attends to keys/values (B, H, S, dk); bias (B or 1, H, T, S) holds position bias + mask."""
        B, T, _ = x.shape
        q = self.split_heads(self.q(x))  # (B, H, T, dk)
        # no 1/sqrt(dk): Mesh TensorFlow folds it into the initialisation of q (modeling_t5.py _init_weights)
        scores = q @ k.transpose(-1, -2)  # (B, H, T, dk) @ (B, H, dk, S) -> (B, H, T, S)
        scores += bias  # in place: the raw scores are not needed for the backward pass
        weights = F.softmax(scores.float(), dim=-1).type_as(scores)  # softmax in fp32 even under bf16
        weights = dropout(weights, self.dropout_rate, self.training)
        out = weights @ v  # (B, H, T, S) @ (B, H, S, dk) -> (B, H, T, dk)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.d_kv)  # (B, H, T, dk) -> (B, T, H*dk)
        return self.o(out)


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if cfg.is_gated_act:  # T5 v1.1: wo(act(wi_0 x) * wi_1 x)
            self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
            self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        else:  # T5 v1.0: wo(relu(wi x))
            self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.act, self.gated, self.dropout_rate = ACTIVATIONS[cfg.dense_act_fn], cfg.is_gated_act, cfg.dropout_rate

    def forward(self, x):
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))  # (B, T, d_ff)
        h = dropout(h, self.dropout_rate, self.training)  # dropout after the activation, before wo
        return self.wo(h)


class Block(nn.Module):
    """Pre-norm residual block: self-attention, (decoder only) cross-attention, feed-forward."""

    def __init__(self, cfg, is_decoder, has_relative_bias):
        super().__init__()
        norm = lambda: RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        # ModuleDicts give the keys Hugging Face uses: layer.0.SelfAttention.q.weight, layer.0.layer_norm.weight...
        layers = [nn.ModuleDict({"SelfAttention": Attention(cfg, has_relative_bias), "layer_norm": norm()})]
        if is_decoder:
            layers.append(nn.ModuleDict({"EncDecAttention": Attention(cfg, False), "layer_norm": norm()}))
        layers.append(nn.ModuleDict({"DenseReluDense": FeedForward(cfg), "layer_norm": norm()}))
        self.layer = nn.ModuleList(layers)
        self.dropout_rate = cfg.dropout_rate

    def forward(self, h, self_bias, cross_kv=None, cross_bias=None, past_kv=None):
        """Returns the new hidden states and this block's self-attention keys/values (the decoding cache)."""
        drop = lambda x: dropout(x, self.dropout_rate, self.training)
        sa = self.layer[0]
        x = sa.layer_norm(h)
        k, v = sa.SelfAttention.keys_values(x)  # 2 x (B, H, T, dk)
        if past_kv is not None:  # decoding one token: attend to every earlier token's cached keys/values too
            k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)  # (B, H, past+T, dk)
        h = h + drop(sa.SelfAttention(x, k, v, self_bias))
        if cross_kv is not None:
            ca = self.layer[1]
            h = h + drop(ca.EncDecAttention(ca.layer_norm(h), *cross_kv, cross_bias))
        ff = self.layer[-1]
        h = h + drop(ff.DenseReluDense(ff.layer_norm(h)))
        return h, (k, v)


def relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """modeling_t5.py _relative_position_bucket, step for step (the float32 log and the truncation matter).

    relative_position = key position - query position. Small distances get a bucket each, larger ones share
    logarithmically wider buckets up to max_distance. Bidirectional (encoder) uses half the buckets per sign.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).to(torch.long) * num_buckets
        distance = relative_position.abs()
    else:  # causal (decoder): only keys at or before the query exist
        distance = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_bucket = max_exact + (torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
                              * (num_buckets - max_exact)).to(torch.long)
    log_bucket = torch.min(log_bucket, torch.full_like(log_bucket, num_buckets - 1))
    return buckets + torch.where(is_small, distance, log_bucket)


class Stack(nn.Module):
    def __init__(self, cfg, embed_tokens, is_decoder):
        super().__init__()
        self.embed_tokens = embed_tokens  # the shared embedding, registered here too so the keys match HF's aliases
        n = cfg.num_decoder_layers if is_decoder else cfg.num_layers
        self.block = nn.ModuleList([Block(cfg, is_decoder, has_relative_bias=(i == 0)) for i in range(n)])
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.is_decoder, self.cfg, self.dropout_rate = is_decoder, cfg, cfg.dropout_rate

    def position_bias(self, query_pos, key_pos):
        """(Q,), (K,) absolute positions -> (1, H, Q, K) learned bias, from block 0's table (shared by all blocks)."""
        rel = key_pos[None, :] - query_pos[:, None]  # (Q, K)
        buckets = relative_position_bucket(rel, not self.is_decoder, self.cfg.relative_attention_num_buckets,
                                           self.cfg.relative_attention_max_distance)
        table = self.block[0].layer[0].SelfAttention.relative_attention_bias
        return table(buckets).permute(2, 0, 1).unsqueeze(0)  # (Q, K, H) -> (1, H, Q, K)

    def forward(self, h, self_bias, cross_kv=None, cross_bias=None, cache=None):
        """h (B, T, d) embedded inputs -> (B, T, d). cache: a list of per-block (k, v), updated in place."""
        h = dropout(h, self.dropout_rate, self.training)
        for i, block in enumerate(self.block):
            h, kv = block(h, self_bias, cross_kv[i] if cross_kv else None, cross_bias,
                          cache[i] if cache else None)
            if cache is not None:
                cache[i] = kv
        return dropout(self.final_layer_norm(h), self.dropout_rate, self.training)


class T5(nn.Module):
    family = "t5"

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, self.shared, is_decoder=False)
        self.decoder = Stack(cfg, self.shared, is_decoder=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight

    def to_dtype(self, dtype):
        """Every weight in dtype but FLOAT32_WEIGHTS (as load_t5 loads them)."""
        check_dtype(dtype)
        for name, p in self.named_parameters():  # a tied head is listed once, as shared.weight
            if name not in FLOAT32_WEIGHTS:
                p.data = p.data.to(dtype)
        return self

    @property
    def dtype(self):
        return self.encoder.final_layer_norm.weight.dtype  # the blocks' dtype: what the model computes in

    @property
    def width(self):
        return self.config.d_model  # the width of a prompt vector

    def input_embedding(self):
        return self.shared.weight  # (V, d): origins are rows of it

    def encode(self, input_ids, attention_mask=None, prompt=None):
        """(B, S) token ids [+ soft prompt (n, d) or (B, n, d)] -> hidden (B, n+S, d) and its mask (B, n+S)."""
        B, S = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = self.shared(input_ids).to(self.dtype)  # (B, S, d); T5 does not scale embeddings by sqrt(d)
        if prompt is not None:  # prompt tuning (Lester et al. 2021; PEFT peft_model.py): prepend, extend the mask
            prompt = check_prompt(prompt, B, self.width).to(h.dtype)
            h = torch.cat([prompt.expand(B, -1, -1), h], dim=1)  # (B, n+S, d)
            attention_mask = torch.cat([attention_mask.new_ones(B, prompt.shape[-2]), attention_mask], dim=1)
        pos = torch.arange(h.shape[1], device=h.device)  # prompt vectors take positions 0..n-1, as in PEFT
        bias = self.encoder.position_bias(pos, pos) + additive_mask(attention_mask[:, None, None, :], self.dtype)
        return self.encoder(h, bias), attention_mask  # bias: (1, H, S, S) + (B, 1, 1, S) -> (B, H, S, S)

    def cross_keys_values(self, encoder_hidden):
        """Keys/values of the encoder output for every decoder block: computed once per input, reused per step.
        Made contiguous once, so that each decoding step's matmuls need not copy them again."""
        kv = [blk.layer[1].EncDecAttention.keys_values(encoder_hidden) for blk in self.decoder.block]
        return [(k.contiguous(), v.contiguous()) for k, v in kv]  # each (B, H, S, dk)

    def decode(self, decoder_input_ids, cross_kv, encoder_mask, query_pos=None, key_pos=None, allowed=None,
               cache=None):
        """Decoder ids (B, T) -> logits (B, T, V). By default a causal pass over positions 0..T-1; query_pos,
        key_pos and allowed (Q, K) describe other layouts (one cached step, or label sequences packed side by side)."""
        h = self.shared(decoder_input_ids).to(self.dtype)  # (B, T, d)
        if query_pos is None:
            query_pos = key_pos = torch.arange(h.shape[1], device=h.device)
            allowed = key_pos[None, :] <= query_pos[:, None]  # causal (T, T)
        self_bias = self.decoder.position_bias(query_pos, key_pos) + additive_mask(allowed, self.dtype)
        # cross-attention has no position bias in T5, only the encoder padding mask
        cross_bias = additive_mask(encoder_mask[:, None, None, :], self.dtype)  # (B, 1, 1, S)
        h = self.decoder(h, self_bias, cross_kv, cross_bias, cache)
        return self.logits(h)

    def logits(self, h):
        if self.config.tie_word_embeddings:
            # modeling_t5.py: with tied embeddings the decoder output is rescaled by d_model**-0.5 before the head
            h = h * self.config.d_model ** -0.5
        return F.linear(h, self.lm_head.weight.to(h.dtype))  # (B, T, d) @ (d, V) -> (B, T, V); a tied head is fp32

    def forward(self, input_ids, decoder_input_ids, attention_mask=None, prompt=None):
        encoder_hidden, encoder_mask = self.encode(input_ids, attention_mask, prompt)
        return self.decode(decoder_input_ids, self.cross_keys_values(encoder_hidden), encoder_mask)


def shift_right(labels, start_id=0, pad_id=0):
    """Teacher forcing inputs: (B, T) labels -> [start, y_0 .. y_{T-2}], with the -100 ignore marks made pad."""
    inputs = torch.cat([labels.new_full((labels.shape[0], 1), start_id), labels[:, :-1]], dim=1)
    return inputs.masked_fill(inputs == -100, pad_id)


# -----------------------------------------------------------------------------
# decoding and scoring (used by evaluation)

@torch.no_grad()
def generate_greedy(model, input_ids, attention_mask=None, prompt=None, max_new_tokens=128):
    """Greedy decoding with a key/value cache; (B, S) -> (B, <= max_new_tokens) ids, pad after each EOS.

    Same output as Hugging Face `generate(do_sample=False, num_beams=1)` without the leading start token.
    """
    cfg = model.config
    encoder_hidden, encoder_mask = model.encode(input_ids, attention_mask, prompt)
    cross_kv = model.cross_keys_values(encoder_hidden)
    B, device = input_ids.shape[0], input_ids.device
    cache = [None] * len(model.decoder.block)

    def next_logits(step, token):
        if token is None:  # the decoder starts from its start token
            token = torch.full((B, 1), cfg.decoder_start_token_id, dtype=torch.long, device=device)
        pos = torch.arange(step + 1, device=device)
        allowed = torch.ones(1, step + 1, dtype=torch.bool, device=device)  # the newest token sees all before it
        return model.decode(token, cross_kv, encoder_mask, pos[-1:], pos, allowed, cache)[:, -1]  # (B, V)
    return decoding.greedy(next_logits, B, device, max_new_tokens, [cfg.eos_token_id], cfg.pad_token_id)


def score_candidates(model, input_ids, attention_mask, prompt, candidates):
    """Log-probability of each candidate label sequence: (B, S) inputs, C token lists -> (B, C).

    One encoder pass and one decoder pass: the candidates are packed side by side into one decoder sequence;
    each attends only to its own earlier tokens (block-diagonal causal mask) and its positions restart at 0,
    so every candidate is scored exactly as if it were decoded alone.
    """
    device = input_ids.device
    encoder_hidden, encoder_mask = model.encode(input_ids, attention_mask, prompt)
    targets, pos, seg, allowed = decoding.pack(candidates, device)  # (L,) x 3, (L, L) block-diagonal causal
    start = model.config.decoder_start_token_id
    inputs = torch.tensor([t for c in candidates for t in [start] + list(c[:-1])], device=device)  # (L,)
    B = input_ids.shape[0]
    logits = model.decode(inputs.expand(B, -1), model.cross_keys_values(encoder_hidden), encoder_mask,
                          pos, pos, allowed)  # (B, L, V)
    token_logp = logits.float().log_softmax(-1).gather(-1, targets.expand(B, -1)[..., None])[..., 0]  # (B, L)
    return decoding.per_candidate(token_logp, seg, len(candidates))


# -----------------------------------------------------------------------------
# dropout on the CPU (the network above calls it; GPUs use torch's kernel)

def dropout(x, rate, training):
    """F.dropout with cheaper random numbers on the CPU, where torch's bernoulli_ draws one 32-bit number per
    element and took a large share of a prompt-tuning step (measured in docs/speed.md).

    One 64-bit draw from torch's generator gives four 16-bit uniform integers, one per element, so the drop
    probability is `rate` rounded to a multiple of 2**-16 (0.1 -> 6554/65536 = 0.1000061). Kept values are
    multiplied by the inverse of that same keep probability, so the expectation is x. The masks come from
    torch's default generator: seeded by torch.manual_seed and saved by torch.get_rng_state like every other
    random number. GPUs keep torch's fused kernel, cheap there.
    """
    if not training or rate == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, rate, True)
    drop_below = round(rate * 65536)  # of 65536 equally likely 16-bit values, this many drop the element
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-2 ** 63, None)  # the full 64-bit range
    bits = words.view(torch.int16)[:x.numel()].view(x.shape)  # (numel/4,) int64 -> x's shape in int16, on [-2^15, 2^15)
    keep = bits >= drop_below - 32768
    # where, not x * keep: a bool operand of mul is first copied to a float tensor of x's size
    return torch.where(keep, x, 0).mul_(65536 / (65536 - drop_below))


# -----------------------------------------------------------------------------
# loading Hugging Face checkpoints (safetensors only)

IGNORED_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)  # HF ignores it too
# the input embedding table stays float32 in any dtype: origins are rows of it (prompts.origin_prompt), the
# checkpoint's values on every device and in every precision; its lookups (and a tied head) are cast to the blocks'
# dtype where they are used, so the model computes as Hugging Face's in that dtype
FLOAT32_WEIGHTS = ("shared.weight",)


def load_t5(path, device="cpu", dtype=torch.float32):
    """A Hugging Face T5 folder (config.json + safetensors) -> T5 in eval mode, every weight frozen, in dtype but
    FLOAT32_WEIGHTS."""
    cfg = T5Config.from_json(model_file(model_folder(path), "config.json", "the model config"))
    # the names under which a checkpoint may store the shared input embedding (HF _tied_weights_keys)
    tied = ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    return load_weights(build(T5, cfg), path, device, dtype, tied + ["lm_head.weight"] * cfg.tie_word_embeddings,
                        IGNORED_KEYS, FLOAT32_WEIGHTS)


def save_t5(model, folder):
    """model.safetensors and config.json in Hugging Face's format (load_t5 and transformers read them back)."""
    save_weights(model, folder, {"model_type": "t5", **model.config.to_dict()})


# -----------------------------------------------------------------------------
# tokenizer: sentencepiece with T5's conventions

class Tokenizer:
    """T5's tokenizer: EOS (1) appended, pad 0, and `<extra_id_k>` = 32099 - k beyond the 32,000 pieces."""

    SPECIAL = re.compile(r"(<extra_id_\d{1,2}>|</s>|<pad>|<unk>)")  # T5 has 100 sentinels

    def __init__(self, model_file):
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"{model_file}: not a sentencepiece model ({e}); copy spiece.model from the "
                                  f"model's hub repo again") from None
        self.model_file = model_file
        self.n_pieces = self.sp.get_piece_size()
        self.pad_id, self.eos_id, self.unk_id = 0, 1, 2

    def encode(self, text):
        """str -> ids ending with EOS. Special tokens written in the text become their ids, as in HF's T5Tokenizer;
        like HF, whitespace next to an <extra_id_k> is dropped."""
        parts = self.SPECIAL.split(text)  # [text, special, text, special, ..., text]
        ids = []
        for i in range(0, len(parts), 2):
            chunk = parts[i]
            if i > 0 and parts[i - 1].startswith("<extra_id_"):
                chunk = chunk.lstrip()
            if i + 1 < len(parts) and parts[i + 1].startswith("<extra_id_"):
                chunk = chunk.rstrip()
            if chunk:
                ids.extend(self.sp.encode(chunk))
            if i + 1 < len(parts):
                ids.append(self.special_id(parts[i + 1]))
        return ids + [self.eos_id]

    def special_id(self, token):
        if token.startswith("<extra_id_"):
            return self.n_pieces + 99 - int(token[10:-1])  # tokenization_t5.py: 32099 - k
        return {"</s>": self.eos_id, "<pad>": self.pad_id, "<unk>": self.unk_id}[token]

    def decode(self, ids):
        """ids -> str, skipping special tokens (pad, EOS, unk, sentinels) as `skip_special_tokens=True` does."""
        keep = [int(i) for i in ids if int(i) > self.unk_id and int(i) < self.n_pieces]
        return self.sp.decode(keep)

    example_limit = data.MAX_SOURCE  # the paper's max_source_length

    def encode_example(self, task, row, max_source=data.MAX_SOURCE):
        """A task's example -> (source ids, target ids, whether the source was cut): the source truncated to
        max_source with EOS kept last, as Hugging Face truncates T5 inputs; the target is the label word."""
        ids, target = self.encode(task.source(row)), self.encode(task.target(row))
        if len(ids) > max_source:
            return ids[:max_source - 1] + [self.eos_id], target, True
        return ids, target, False


def load_tokenizer(path):
    """A folder holding spiece.model, or the .model file itself -> Tokenizer."""
    if os.path.isdir(path):
        return Tokenizer(model_file(path, "spiece.model", "the T5 tokenizer"))
    if os.path.exists(path):
        return Tokenizer(path)
    raise CheckpointError(f"{path}: no such model folder or sentencepiece file; get one with: "
                          f"python tpv.py download t5-base")


# -----------------------------------------------------------------------------
# the family interface (families.py): what the loop, evaluation and the command line ask of T5

FAMILY, NAME, PEFT_TASK_TYPE = "t5", "T5", "SEQ_2_SEQ_LM"
OPTIONS = ("dropout",)  # the paper trained with T5's dropout (0.1); --dropout 0 for exact comparisons
# run.sh's defaults: the paper's v1 T5 grid (paper §6): 10 origins, its 6 source tasks
GRID = {"origins": "0-9", "tasks": ("mnli", "qnli", "sst2", "yelp_polarity", "dbpedia", "trec")}
load = load_t5


def recipe_defaults(task):
    """Paper §3: batch 32, 10 epochs; TREC 50, because it underfits (prompt_tuning_trec.toml)."""
    return {"epochs": 50 if task == "trec" else 10, "batch_size": 32}


def batch_maker(model, tokenizer, loss):
    """Source and target of each example (the loss is over the target, the label words, whatever --loss)."""
    return data.collate


def run_losses(model, prompts, batch):
    """prompts (R, n, d), a batch of B examples -> (R,) summed cross-entropy of each prompt over its own copy of
    the batch, in fp32 under any autocast. Row r*B + b is example b with prompt r: a prompt's loss (and so its
    gradient) comes from its rows only (the model is frozen, and T5 mixes no rows)."""
    rows, prompt_rows = rows_per_prompt(batch, prompts)  # (R*B, S) and (R*B, T); (R*B, n, d)
    logits = model(rows["input_ids"], shift_right(rows["labels"]), rows["attention_mask"],
                   prompt=prompt_rows)  # (R*B, T, V)
    token_losses = F.cross_entropy(logits.float().flatten(0, 1), rows["labels"].flatten(), ignore_index=-100,
                                   reduction="none")  # (R*B*T,), 0 on padding
    return token_losses.view(prompts.shape[0], -1).sum(1)  # (R,)


def label_words(task):
    """What T5 predicts: the task's label words as the paper spells them; () for STS-B (a generated number)."""
    return task.labels


def predict_words(model, tokenizer, task, tokens, idx, prompts, scoring="generate", max_new_tokens=None):
    """The label words predicted for examples idx with each of R prompts (R, n, d) (None: the model alone):
    generated greedily, or the best-scoring label word (scoring="rank"). -> R lists of len(idx) words."""
    batch = {k: v.to(model.lm_head.weight.device) for k, v in data.collate(tokens, idx).items()}
    rows, prompt_rows = rows_per_prompt(batch, prompts)  # (R*B, S), prompt-major; (R*B, n, d)
    ids, mask = rows["input_ids"], rows["attention_mask"]
    candidates = [tokenizer.encode(w) for w in task.labels]
    if scoring == "rank":
        scores = score_candidates(model, ids, mask, prompt_rows, candidates)  # (R*B, C)
        words = [task.labels[j] for j in scores.argmax(-1).tolist()]
    else:  # a generation longer than every label word cannot be one (README)
        longest = max(len(c) for c in candidates) + 4 if candidates else 8
        out = generate_greedy(model, ids, mask, prompt_rows, max_new_tokens or longest)
        words = [tokenizer.decode(row).strip() for row in out.tolist()]
    return [words[r:r + len(idx)] for r in range(0, len(words), len(idx))]


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


def largest_pack(cfg, batch_size, source_len, target_len, dtype, budget):
    """The most runs whose packed step fits `budget` bytes (at least 1)."""
    return max(1, budget // activation_bytes(cfg, batch_size, source_len, target_len, dtype))


def inference_bytes(cfg, source_len):
    """An estimate of the memory of one row of an inference pass (validation or greedy evaluation) over
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
    fewer to decode at 1,024 rows: docs/speed.md), so 1,024, or as many as fit the memory budget at the longest
    source."""
    if device.type != "cuda":
        return 64
    fit = devices.memory_budget(device) // inference_bytes(model.config, data.MAX_SOURCE + prompt_len)
    return int(min(GPU_INFERENCE_ROWS, max(1, fit)))


def describe(model):
    cfg, count = model.config, lambda module: sum(p.numel() for p in module.parameters())
    embedding = model.input_embedding().numel()
    head = "" if cfg.tie_word_embeddings else f", lm_head {model.lm_head.weight.numel():,}"
    return [f"parameters {count(model):,} in all: embedding {embedding:,}, encoder {count(model.encoder) - embedding:,}"
            f", decoder {count(model.decoder) - embedding:,}" + head,
            f"tied head  {cfg.tie_word_embeddings} (decoder output rescaled by d_model**-0.5: "
            f"{cfg.tie_word_embeddings})"]


def tiny_model(tokenizer_file, seed):
    """A random 2-layer T5 of width 32 with the vocabulary of a sentencepiece file (tpv.py tiny-model --spiece)."""
    if not tokenizer_file:
        raise CheckpointError("tiny-model needs --spiece FILE (a T5 spiece.model), or --family llama --tokenizer")
    tokenizer = load_tokenizer(tokenizer_file)
    torch.manual_seed(seed)
    model = T5(T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4))

    def write(folder):
        save_t5(model, folder)
        shutil.copyfile(tokenizer.model_file, os.path.join(folder, "spiece.model"))
    return model, write
