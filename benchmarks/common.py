"""
What the benchmarks share: the training code they measure (imported here alone), the model shapes, random models
and batches, the device and its timing, memory readings and table columns. Nothing here measures anything by
itself; run the benchmarks through bench.py (python bench.py --help).
"""
import argparse
import os
import resource
import statistics
import tempfile
import time

import torch

# The training code the benchmarks use, every name imported here and nowhere else in benchmarks/ (the other
# modules use them as common.NAME): when the training code moves, only these lines change.
import data
import evaluation
import families
import model_llama
import model_t5
import prompts
from data import instruct
from experiments import LAMBDAS
from support import hub, weights
from support.devices import autocast_for, bf16_is_emulated, memory_budget, resolve_precision, weights_dtype
from train import clip_per_run, forward_backward, recipe, validation_interval


def largest_pack(cfg, batch_size, source_len, target_len, precision, device, family=model_t5):
    """The most runs whose packed step fits the memory budget, as tpv.py train's default --pack (the family's
    largest_pack)."""
    return family.largest_pack(cfg, batch_size, source_len, target_len, weights_dtype(precision, device),
                               memory_budget(device))

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench.py")  # for fresh processes
SHAPES = {  # the published configs' shapes (weights are random)
    "t5-small": dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64, feed_forward_proj="relu"),
    "t5-base": dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64, feed_forward_proj="relu"),
    "t5-v1_1-like": dict(d_model=512, d_ff=1024, num_layers=6, num_heads=8, d_kv=64, feed_forward_proj="gated-gelu",
                         tie_word_embeddings=False),  # gated-gelu, untied head, no rescale
    "flan-t5-small": dict(d_model=512, d_ff=1024, num_layers=8, num_heads=6, d_kv=64, feed_forward_proj="gated-gelu",
                          tie_word_embeddings=False),  # 6 heads x 64 = 384 != d_model
    "asymmetric": dict(d_model=512, d_ff=2048, num_layers=4, num_decoder_layers=2, num_heads=8, d_kv=64,
                       feed_forward_proj="relu"),
    "t5-large": dict(d_model=1024, d_ff=4096, num_layers=24, num_heads=16, d_kv=64, feed_forward_proj="relu"),
    "tiny": dict(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, feed_forward_proj="relu"),  # for tests
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the precisions a pack trains in (devices.autocast_for)
EMULATED_BF16 = ("bf16: not timed: this CPU has no native bf16 (AVX512-BF16 or AMX), so PyTorch emulates it, about "
                 "100x slower than fp32 (devices.bf16_is_emulated)")
MATMUL_N = {"cuda": 8192, "cpu": 2048}  # matmul_rate's n: large enough to reach the device's peak
SPEED_HEADING = f"{'s/step':>9}{'tokens/s':>10}{'ours is':>10}"  # the columns of speed_columns


def pick_device(name):
    """--device: auto is CUDA when PyTorch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def same_weights(build_hf, load_ours, dtype, device, *hf_options):
    """Our model and transformers' on the same random weights (seed 0), written by transformers and read back by
    both: (ours, [transformers' model for each dict of from_pretrained options, or one without]), frozen and in
    eval mode. Trained models have norm scales far from 1; random ones in [0.5, 1.5] keep the comparison honest."""
    torch.manual_seed(0)
    hf = build_hf()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:  # T5's layer_norm, Llama's input_layernorm, post_attention_layernorm and norm
                p.uniform_(0.5, 1.5)
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = load_ours(folder, device=device, dtype=dtype)
        hfs = [type(hf).from_pretrained(folder, **options).to(device, dtype)  # .to: transformers 4.44 (the paper's) too
               .eval().requires_grad_(False) for options in hf_options or [{}]]
    return ours, hfs


def random_t5(cfg, device, precision="fp32"):
    """Our T5 with random weights of a config (nothing loaded), frozen, in the dtype tpv.py loads it in for this
    precision (devices.weights_dtype), in training mode: dropout at the config's rate (0.1), as the recipe trains."""
    torch.manual_seed(0)
    model = model_t5.T5(cfg).requires_grad_(False).to(device).train()
    return model.to_dtype(weights_dtype(precision, device))


def random_llama(cfg, device, precision="fp32"):
    """Our Llama with random weights of a config, frozen, in the dtype tpv.py loads it in for this precision: built
    without memory (weights.build) and each weight made in place on the device, as load_llama fills it (an 8B
    model is never whole in fp32 on the CPU): norm scales 1, the rest N(0, 0.02)."""
    torch.manual_seed(0)
    model, dtype = weights.build(model_llama.Llama, cfg), weights_dtype(precision, device)
    for name, p in list(model.named_parameters()):  # a tied head is listed once, as the embedding
        owner, attr = name.rsplit(".", 1)
        value = torch.empty(p.shape, dtype=dtype, device=device)
        if "norm" in owner:
            value.fill_(1.0)
        else:
            value.normal_(0.0, 0.02)
        setattr(model.get_submodule(owner), attr, torch.nn.Parameter(value, requires_grad=False))
    model.tie_weights()
    return model.train()


def random_causal_batch(examples, prefix_len, answer_len, vocab_size, device, loss="full", seed=0):
    """A decoder-only batch of random token ids (data.collate_causal's keys, no padding): each row a chat prefix
    of prefix_len tokens and an answer of answer_len; labels the ids (--loss full) or the answer's alone (answer).
    Random rows share no start (shared_ids is empty), so what is timed is an upper bound: a task's real rows
    share their chat's opening, which model_llama.prefix computes once per prompt."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, min(32000, vocab_size), (examples, prefix_len + answer_len), generator=g)
    labels = ids.clone()
    if loss == "answer":
        labels[:, :prefix_len] = -100
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device),
            "shared_ids": ids[0, :0].to(device)}


def random_batch(examples, source_len, target_len, vocab_size, device, seed=0):
    """A batch of random token ids: every source source_len long, every target target_len (no padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, min(32000, vocab_size), (examples, source_len), generator=g)
    labels = torch.randint(3, min(32000, vocab_size), (examples, target_len), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device)}


def forward_flops(cfg, batch, src, tgt):
    """Matrix-multiply FLOPs of one forward pass (2 per multiply-add); src counts prompt + source tokens.
    Per layer and token: the attention projections, 4 x d_model x inner (inner = heads x d_kv; in the decoder 6 per
    target token, self-attention's 4 and cross-attention's query and output, and cross-attention's keys and values
    2 per source token); the feed-forward, 2 x d_model x d_ff (3 x when gated); the attention scores and weighted
    sum, 2 x keys x inner. Then the logits, d_model x vocab per target token. A training step is about twice this:
    its backward pass computes the activations' gradients only (one product per forward product), none of the
    frozen weights'."""
    inner, ff = cfg.num_heads * cfg.d_kv, (3 if cfg.is_gated_act else 2) * cfg.d_model * cfg.d_ff
    enc = cfg.num_layers * src * (4 * cfg.d_model * inner + ff + 2 * src * inner)
    dec = cfg.num_decoder_layers * (tgt * (6 * cfg.d_model * inner + ff + 2 * tgt * inner + 2 * src * inner)
                                    + src * 2 * cfg.d_model * inner)  # cross-attention keys/values of the encoder
    return 2 * batch * (enc + dec + tgt * cfg.d_model * cfg.vocab_size)


def matmul_rate(dtype, device=torch.device("cpu"), repeats=5):
    """FLOP/s of the device's (n x n) @ (n x n) in dtype, n = MATMUL_N, the best of a few tries."""
    n = MATMUL_N[device.type]
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    a @ b
    return 2 * n ** 3 / min(timed(lambda: a @ b, device) for _ in range(repeats))


def updater():
    """-> update(name, params, loss): the backward pass, then an AdamW step (the recipe's lr and weight decay; one
    optimizer per name, made at its first step) and zero_grad; returns the loss, read back."""
    optimizers = {}

    def update(name, params, loss):
        loss.backward()
        optimizers.setdefault(name, torch.optim.AdamW(params, lr=0.3, weight_decay=1e-5)).step()
        optimizers[name].zero_grad(set_to_none=True)
        return loss.item()
    return update


def timed(fn, device=torch.device("cpu")):
    """Seconds of one call of fn; on a GPU, of the work it queued too (synchronised before and after)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def medians(fns, steps, device):
    """{name: median seconds of one call} over `steps` rounds that call every fn once, after one untimed warm-up
    round; interleaved, so that a slow spell of the machine hits every fn alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(ts) for name, ts in times.items()}


def device_words(device):
    """The device in words, for a table's heading: the GPU's name, or the CPU's model and torch's threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "CPU"
    return f"{model} CPU, {torch.get_num_threads()} threads"


def peak_memory_mb(device):
    """This process's peak memory: on a GPU what torch allocated there; on the CPU its peak resident memory,
    VmHWM, because ru_maxrss survives exec on Linux: a child started by a big parent would report the parent's
    peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        return proc_status_mb()["VmHWM"]
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_mb():
    """{field: MB} of this process's memory fields in /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile, ...)."""
    with open("/proc/self/status") as f:
        return {key: int(value.split()[0]) / 1024 for key, value in (line.split(":", 1) for line in f)
                if value.strip().endswith(" kB")}


def speed_columns(seconds, tokens, ours_seconds):
    """A step table's s/step, tokens/s and `ours is` (this variant's time / ours: 2.00x, ours takes half)."""
    return f"{seconds:9.3f}{tokens / seconds:10,.0f}{seconds / ours_seconds:9.2f}x"


def versions():
    import transformers
    try:
        import peft
    except ImportError:
        return f"transformers {transformers.__version__}, no peft"
    return f"transformers {transformers.__version__}, peft {peft.__version__}"


def comma_list(item=str, choices=None):
    """argparse type: a comma list of values of type `item` (each one of `choices`, when given) -> a list."""
    def parse(text):
        try:
            values = [item(x) for x in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of {item.__name__} values") from None
        bad = [v for v in values if choices is not None and v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad[0]!r} is not one of {', '.join(map(str, choices))}")
        return values
    return parse
