"""
Our Llama against transformers' LlamaForCausalLM + PEFT (CAUSAL_LM prompt tuning): a prompt-tuning step on the
same random weights, timed only once both compute the same loss and prompt gradient; and the peak resident memory
of model_llama.load_llama, in a fresh process, on a random checkpoint written as one file and as shards.

    python bench.py llama-step             # our Llama vs transformers + PEFT: prompt-tuning step, 4 x 128 tokens
    python bench.py load --size-gb 3       # peak resident memory of load_llama (fresh process), file and shards

llama-step needs `transformers` and `peft` (pip install -r requirements-test.txt); load runs our Llama alone.
"""
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

import torch

from benchmarks import common
from benchmarks.common import (BENCH, DTYPES, EMULATED_BF16, MATMUL_N, SPEED_HEADING, device_words, matmul_rate,
                               medians, model_llama, pick_device, proc_status_mb, same_weights, speed_columns,
                               updater, versions, weights)


LLAMA3 = dict(rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=False,
              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192})  # Llama-3.1's rope and norm
LLAMA_SHAPES = {  # config.json keys; Llama-3-8B's ratios: head_dim 128 there, 4 query heads per key/value head,
    "llama3-small": dict(num_hidden_layers=4, hidden_size=1024, num_attention_heads=16, num_key_value_heads=4,
                         intermediate_size=3584, vocab_size=32000),  # feed-forward 3.5 x hidden (14336 / 4096)
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=224, vocab_size=300),  # for tests
}
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                vocab_size=128256)  # Llama-3-8B's widths, which `load` halves for small sizes
# llama-step's check before timing: the largest relative differences from ours of the loss and the prompt gradient
SAME_WORK = {"fp32": (1e-5, 1e-4), "bf16-autocast": (1e-2, 1e-1), "bf16": (1e-2, 1e-1)}


def make_llamas(shape, vocab, dtype, device, attentions):
    """Our Llama and transformers' LlamaForCausalLM (one per attn_implementation) on the same random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(**{**LLAMA3, **LLAMA_SHAPES[shape], **({"vocab_size": vocab} if vocab else {})})
    ours, hfs = same_weights(lambda: LlamaForCausalLM(config), model_llama.load_llama, dtype, device,
                             *({"attn_implementation": a} for a in attentions))
    return ours, dict(zip(attentions, hfs))


def llama_losses(ours, hfs, ids, init, autocast):
    """{variant: (its prompt parameters, loss())}: ours, and transformers + PEFT's CAUSAL_LM prompt tuning for each
    attention implementation, both from init. The loss: the mean cross-entropy of every token given the prompt and
    the tokens before it (the first given the prompt alone); ours computes it as training does (the family's run_losses:
    model_llama.token_losses, one run), PEFT from labels = the tokens."""
    from peft import PromptTuningConfig, get_peft_model
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    prompt, rows = torch.nn.Parameter(init.clone()), {**batch, "shared_ids": ids[0, :0]}  # random rows share no start

    def ours_loss():
        with autocast():
            return common.model_llama.run_losses(ours, prompt[None], rows)[0] / ids.numel()
    losses = {"ours": ([prompt], ours_loss)}
    for attention, hf in hfs.items():
        peft_model = get_peft_model(hf, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=len(init)))
        with torch.no_grad():
            peft_model.prompt_encoder.default.embedding.weight.copy_(init)

        def peft_loss(peft_model=peft_model):
            with autocast():
                return peft_model(**batch).loss
        losses[f"transformers + PEFT, {attention}"] = ([p for p in peft_model.parameters() if p.requires_grad],
                                                       peft_loss)
    return losses


def first_differences(losses):
    """{variant: (relative loss difference, relative prompt-gradient difference)} against ours, of one forward and
    backward pass of each from the same prompt: |loss - ours| / ours, max |grad - ours'| / max |ours'|."""
    first = {}
    for name, (params, loss_of) in losses.items():
        loss = loss_of()
        loss.backward()
        first[name] = loss.item(), params[0].grad.float()
        params[0].grad = None
    ours_loss, ours_grad = first.pop("ours")
    return {name: (abs(loss - ours_loss) / abs(ours_loss),
                   ((grad - ours_grad).abs().max() / ours_grad.abs().max()).item())
            for name, (loss, grad) in first.items()}


def llama_forward_flops(cfg, batch, positions, predicted):
    """Matrix-multiply FLOPs of one forward pass of a Llama (2 per multiply-add) over `positions` (prompt + tokens)
    with the head over `predicted` of them. Per layer and position: the projections, hidden x head_dim x (2 query
    and output heads + 2 key/value heads); the SwiGLU feed-forward, 3 x hidden x intermediate; the causal
    attention's scores and weighted sum, 2 x heads x head_dim per key seen ((positions + 1) / 2 on average)."""
    d, H, KV, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    per_position = 2 * d * hd * (H + KV) + 3 * d * cfg.intermediate_size + H * hd * (positions + 1)
    return 2 * batch * (cfg.num_hidden_layers * positions * per_position + predicted * d * cfg.vocab_size)


def llama_step(args):
    """One prompt-tuning step (forward, loss over the sequence, backward to the prompt, AdamW) of our Llama
    against transformers' LlamaForCausalLM + PEFT, after checking that they compute the same loss and gradient."""
    device = pick_device(args.device)
    if args.precision != "fp32" and common.bf16_is_emulated(device):
        sys.exit(f"bench.py llama-step: {EMULATED_BF16}; llama-step --precision fp32")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    autocast = common.autocast_for("bf16" if args.precision == "bf16-autocast" else "fp32", device)
    ours, hfs = make_llamas(args.shape, args.vocab, dtype, device, args.attention)
    cfg = ours.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.vocab_size, (args.batch, args.tokens), generator=g).to(device)
    init = (torch.randn(args.prompt, cfg.hidden_size, generator=g) * 0.5).to(device)
    losses = llama_losses(ours, hfs, ids, init, autocast)
    differences = first_differences(losses)
    tolerance = SAME_WORK[args.precision]
    far = {name: d for name, d in differences.items() if not all(x <= t for x, t in zip(d, tolerance))}
    if far:
        sys.exit(f"bench.py llama-step: another loss or gradient than ours, relative differences "
                 f"{'; '.join(f'{name}: loss {a:.1e}, gradient {b:.1e}' for name, (a, b) in far.items())} (at most "
                 f"{tolerance[0]:g} and {tolerance[1]:g} in {args.precision}): the times would compare different work")
    update = updater()
    seconds = medians({name: lambda name=name, params=params, loss_of=loss_of: update(name, params, loss_of())
                       for name, (params, loss_of) in losses.items()}, args.repeats, device)
    rope = cfg.rope_scaling["rope_type"]
    print(f"Llama prompt-tuning step (forward, loss over the sequence, backward to the prompt, AdamW), {args.shape} "
          f"shape ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
          f"{cfg.num_key_value_heads} key/value heads, intermediate {cfg.intermediate_size}, vocab {cfg.vocab_size}, "
          f"{rope} rope), batch {args.batch}, {args.prompt} prompt + {args.tokens} tokens, {args.precision}, "
          f"{device_words(device)}, median of {args.repeats}; {versions()}")
    print(f"{'':28}{SPEED_HEADING}{'loss diff':>11}{'grad diff':>11}")
    tokens = args.batch * (args.prompt + args.tokens)
    for name, median in seconds.items():
        loss_diff, grad_diff = (f"{x:11.1e}" for x in differences[name]) if name in differences else [f"{'-':>11}"] * 2
        print(f"{name:28}{speed_columns(median, tokens, seconds['ours'])}{loss_diff}{grad_diff}")
    flops = 2 * llama_forward_flops(cfg, args.batch, args.prompt + args.tokens, args.tokens)  # head: labelled ones
    peak = matmul_rate(torch.bfloat16 if args.precision != "fp32" else torch.float32, device)
    print(f"ours: the loss as training computes it (model_llama.run_losses); PEFT: labels = the tokens. tokens/s counts "
          f"prompt + tokens; loss diff, grad diff: relative differences from ours of the first step's loss and prompt "
          f"gradient; ours: {flops / 1e9:,.0f} GFLOP per step, {flops / seconds['ours'] / 1e9:,.1f} "
          f"GFLOP/s = {flops / seconds['ours'] / peak:.0%} of this machine's {args.precision.split('-')[0]} matmul "
          f"rate ({peak / 1e9:,.0f} GFLOP/s, {MATMUL_N[device.type]}^3)")


def llama_parameters(cfg):
    """{name: shape} of a Llama's weights, from the network built on the meta device (no memory)."""
    return {name: p.shape for name, p in weights.build(model_llama.Llama, cfg).named_parameters()}


def llama_of_size(size):
    """A Llama config whose bf16 weights take about `size` bytes: Llama-3-8B's widths (its hidden size, feed-forward,
    vocabulary and heads halved while the embeddings, the head and one layer exceed the size), with as many layers
    as fill the size."""
    shape = LLAMA_8B
    while True:
        one, two = (2 * sum(map(math.prod, llama_parameters(model_llama.LlamaConfig(
            **LLAMA3, **shape, num_hidden_layers=n)).values())) for n in (1, 2))
        if one <= size or shape["hidden_size"] <= 128:  # at 128: one head of 128
            break
        shape = {key: max(1, value // 2) for key, value in shape.items()}
    return model_llama.LlamaConfig(**LLAMA3, **shape, num_hidden_layers=max(1, 1 + round((size - one) / (two - one))))


def write_random_llama(cfg, folder, max_shard=None):
    """A checkpoint of random bf16 weights in Hugging Face's layout: config.json and model.safetensors, or shards of
    at most max_shard bytes (a larger tensor alone) and model.safetensors.index.json. It writes one tensor at a time
    and holds no more in memory. -> the files written."""
    shards, size = [[]], 0
    for name, shape in llama_parameters(cfg).items():
        nbytes = 2 * math.prod(shape)
        if max_shard and shards[-1] and size + nbytes > max_shard:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))] if max_shard else [
        "model.safetensors"]
    for file, tensors in zip(names, shards):
        write_random_safetensors(os.path.join(folder, file), tensors)
    if max_shard:
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 2 * sum(math.prod(s) for s in llama_parameters(cfg).values())},
                       "weight_map": {name: file for file, tensors in zip(names, shards) for name, _ in tensors}}, f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "llama", "architectures": ["LlamaForCausalLM"], **cfg.to_dict()}, f, indent=1)
    return names


def write_random_safetensors(path, tensors):
    """[(name, shape)] -> a safetensors file of random bf16 values (norm scales in [0.5, 1.5], the rest in
    [-0.05, 0.05]), streamed: its header (8 bytes of length, JSON padded with spaces to 8 bytes), then each tensor's
    bytes in the header's order."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + 2 * math.prod(shape)]}
        offset += 2 * math.prod(shape)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, shape in tensors:
            low, high = (0.5, 1.5) if name.endswith("norm.weight") else (-0.05, 0.05)
            f.write(torch.empty(shape, dtype=torch.bfloat16).uniform_(low, high).view(torch.int16).numpy())


def measure_load(folder, dtype):
    """In a fresh process (`load --measure`): MB resident before load_llama (Python, torch and bench.py's imports)
    and at its peak (VmHWM), and the peaks of the two parts of the resident memory, sampled every 10 ms: anonymous
    memory (the loaded weights, copies on the way) and file pages mapped into the process (safetensors' memory map)."""
    baseline = proc_status_mb()["VmRSS"]
    peaks, done = {"RssAnon": 0.0, "RssFile": 0.0}, threading.Event()

    def sample():
        while not done.wait(0.01):
            status = proc_status_mb()
            peaks.update({key: max(peaks[key], status[key]) for key in peaks})
    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    model = model_llama.load_llama(folder, dtype=dtype)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20
    return {"baseline_mb": baseline, "peak_mb": proc_status_mb()["VmHWM"], "anon_mb": peaks["RssAnon"],
            "file_mb": peaks["RssFile"], "weights_mb": weights, "seconds": seconds}


def load_memory(args):
    """Peak resident memory of model_llama.load_llama, each load in a fresh process, of a random bf16 checkpoint of
    about --size-gb written as one file and as shards, against the size of the weights in the loaded dtype."""
    if args.measure:  # the fresh process
        print(json.dumps(measure_load(args.measure, DTYPES[args.dtype[0]])))
        return
    cfg = llama_of_size(args.size_gb * 2 ** 30)
    size = 2 * sum(map(math.prod, llama_parameters(cfg).values()))
    root = args.dir or tempfile.gettempdir()
    free = shutil.disk_usage(root).free
    if free < 1.2 * size:
        sys.exit(f"bench.py load: {root} has {free / 2 ** 30:.1f} GB free, the checkpoint takes {size / 2 ** 30:.1f} "
                 f"GB; pass a smaller --size-gb or another --dir")
    print(f"peak resident memory of model_llama.load_llama, each load in a fresh process; a random checkpoint of "
          f"{size / 2 ** 20:,.0f} MB in bf16 (layers {cfg.num_hidden_layers}, hidden {cfg.hidden_size}, intermediate "
          f"{cfg.intermediate_size}, vocab {cfg.vocab_size}) in {root}; MB = 2^20 bytes")
    print(f"{'layout':22}{'files':>6}{'dtype':>6}{'weights':>9}{'baseline':>10}{'peak':>8}{'(peak-base)':>13}"
          f"{'peak':>8}{'anon':>8}{'mapped':>8}{'load s':>8}")
    print(f"{'':61}{'/ weights':>13}{'/ weights':>10}{'peak':>6}{'peak':>8}")
    shards = f"shards of {args.max_shard_gb:g} GB"
    for layout, max_shard in (("one file", None), (shards, int(args.max_shard_gb * 2 ** 30))):
        with tempfile.TemporaryDirectory(dir=args.dir) as folder:
            files = write_random_llama(cfg, folder, max_shard)
            for dtype in args.dtype:
                out = subprocess.run([sys.executable, BENCH, "load", "--measure", folder,
                                      "--dtype", dtype], capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"bench.py load: loading in a fresh process failed:\n{out.stderr}")
                m = json.loads(out.stdout.splitlines()[-1])
                print(f"{layout:22}{len(files):6}{dtype:>6}{m['weights_mb']:9,.0f}{m['baseline_mb']:10,.0f}"
                      f"{m['peak_mb']:8,.0f}{(m['peak_mb'] - m['baseline_mb']) / m['weights_mb']:12.2f}x"
                      f"{m['peak_mb'] / m['weights_mb']:9.2f}x{m['anon_mb']:8,.0f}{m['file_mb']:8,.0f}"
                      f"{m['seconds']:8.1f}", flush=True)
    print("weights: their size in the loaded dtype; baseline: resident before loading (Python, torch, imports); peak: "
          "VmHWM; anon, mapped: the peaks of anonymous memory and of mapped file pages (RssAnon, RssFile, sampled "
          "every 10 ms), which make up the resident memory; the target: a peak of at most 1.3 x the weights")
