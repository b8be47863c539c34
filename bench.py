"""
Benchmarks, side by side in one run on the same random weights: our T5 against Hugging Face transformers; and
packed training (R runs in one step) against the same runs one after another, and what the paper's grid costs.

    python bench.py all                    # the speed comparison in one run (step x2 shapes, eval, epoch, memory)
    python bench.py step                   # prompt-tuning step: t5-small shape, batch 8, 256 source, 50 prompt
    python bench.py step --shape t5-base --precision bf16-autocast
    python bench.py parity                 # logit differences per config family, fp32 and bf16
    python bench.py data                   # prepare and tokenisation speed, padding of our batches vs 256
    python bench.py eval                   # evaluation examples/s: greedy generation and rank scoring
    python bench.py epoch                  # one epoch over the MNLI and SST-2 samples vs padding to 256
    python bench.py memory                 # peak memory of each variant's training step
    python bench.py pack                   # 10 runs packed vs one after another, run-steps/s (few-shot batches)
    python bench.py estimate --model t5-base   # device-hours of run.sh's grid here (./run.sh --estimate)
    python bench.py llama-step             # our Llama vs transformers + PEFT: prompt-tuning step, 4 x 128 tokens
    python bench.py load --size-gb 3       # peak resident memory of load_llama (fresh process), file and shards

`step` measures forward, loss, backward to the prompt and the AdamW update in training mode (dropout 0.1, as the
recipe trains), and reports medians over repeats. Every command that runs a model takes --device (auto: CUDA
when there is a GPU). step, parity, eval, epoch, memory and llama-step need `transformers` (pip install -r
requirements-test.txt), which is not a run-time dependency; pack and estimate run our T5 alone, load our Llama.
"""
import argparse
import json
import math
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from support import weights
import cli
import data
import evaluation
import experiments
from support import hub
import model_llama
import model_t5
import train

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


def pick_device(name):
    """--device: auto is CUDA when PyTorch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_models(shape, dtype, device=torch.device("cpu")):
    from transformers import T5Config, T5ForConditionalGeneration
    ours, (hf,) = same_weights(lambda: T5ForConditionalGeneration(T5Config(vocab_size=32128, decoder_start_token_id=0,
                                                                           **SHAPES[shape])),
                               model_t5.load_t5, dtype, device)
    return ours, hf


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


MATMUL_N = {"cuda": 8192, "cpu": 2048}  # matmul_rate's n: large enough to reach the device's peak


def matmul_rate(dtype, device=torch.device("cpu"), repeats=5):
    """FLOP/s of the device's (n x n) @ (n x n) in dtype, n = MATMUL_N, the best of a few tries."""
    n = MATMUL_N[device.type]
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    a @ b
    return 2 * n ** 3 / min(timed(lambda: a @ b, device) for _ in range(repeats))


def training_steps(ours, hf, ids, labels, init, autocast, dropout):
    """{name: one prompt-tuning step (forward, loss, backward, AdamW update)} on the same batch and weights,
    in training mode with the given dropout rate (the recipe trains with T5's 0.1)."""
    ctx = lambda: torch.autocast(ids.device.type, torch.bfloat16, enabled=autocast)
    model_t5.set_dropout(ours.train(), dropout)
    hf.train()
    for module in hf.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout
        elif isinstance(getattr(module, "dropout", None), float):  # T5Attention calls F.dropout(p=self.dropout)
            module.dropout = dropout
    prompt_ours, prompt_hf = (init.clone().requires_grad_() for _ in range(2))
    update = updater()

    def ours_step():
        with ctx():
            logits = ours(ids, model_t5.shift_right(labels), prompt=prompt_ours)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return update("ours", [prompt_ours], loss)

    def hf_step():  # the same work: the prompt given to transformers as inputs_embeds
        with ctx():
            embeds = torch.cat([prompt_hf.expand(ids.shape[0], -1, -1).to(hf.dtype), hf.shared(ids)], dim=1)
            loss = hf(inputs_embeds=embeds, labels=labels).loss
        return update("transformers", [prompt_hf], loss)

    steps = {"ours": ours_step, "transformers": hf_step}
    try:
        from peft import PromptTuningConfig, get_peft_model
    except ImportError:
        return steps
    # the official code's stack. peft 0.12 (the paper's) also prepends n more vectors to the decoder input;
    # newer releases prepend to the encoder only. step() reports the decoder length each variant ran.
    peft_model = get_peft_model(hf, PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=init.shape[0]))
    peft_params = [p for p in peft_model.parameters() if p.requires_grad]

    def peft_step():
        with ctx():
            loss = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        return update("transformers + PEFT", peft_params, loss)
    steps["transformers + PEFT"] = peft_step
    return steps


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


def decoder_lengths(ours, hf, steps):
    """{variant: decoder positions its step runs}, seen by hooks on one call of each step."""
    seen = {}

    def hook(module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        x = x if x is not None else kwargs.get("input_ids", args[0] if args else None)
        seen["length"] = x.shape[1]
    hooks = [ours.decoder.register_forward_pre_hook(hook, with_kwargs=True),
             hf.decoder.register_forward_pre_hook(hook, with_kwargs=True)]
    lengths = {}
    for name, fn in steps.items():
        fn()
        lengths[name] = seen.pop("length")
    for h in hooks:
        h.remove()
    return lengths


def parity(args):
    """Max abs / relative logit difference of ours vs transformers, same weights, fp32 and bf16 weights."""
    device = pick_device(args.device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (args.batch, args.src), generator=g)
    mask = torch.ones_like(ids)
    mask[0, args.src // 2:] = 0
    dec = model_t5.shift_right(torch.randint(3, 32000, (args.batch, args.tgt), generator=g))
    ids, mask, dec = ids.to(device), mask.to(device), dec.to(device)
    print(f"logits of ours vs {versions()}, random weights, batch {args.batch}, "
          f"{args.src} source (one row half padding), {args.tgt} decoder tokens, {device}")
    print(f"{'family':16}{'dtype':>7}{'max |diff|':>12}{'max |logit|':>13}{'relative':>11}{'argmax same':>13}")
    for shape in ("t5-small", "t5-v1_1-like", "flan-t5-small", "asymmetric"):
        for dtype in (torch.float32, torch.bfloat16):
            ours, hf = make_models(shape, dtype, device)
            with torch.no_grad():
                got = ours(ids, dec, mask).float()
                want = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.float()
            diff, scale = (got - want).abs().max().item(), want.abs().max().item()
            same = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
            print(f"{shape:16}{str(dtype)[6:]:>7}{diff:12.3g}{scale:13.3g}{diff / scale:11.2g}{same:13.1%}")


def data_speed(args):
    """On the dataset samples: examples/s of prepare (read + write) and of tokenisation; padded tokens of our
    bucketed batches vs padding every input to 256 (the official recipe), for one epoch at batch 32."""
    tokenizer = model_t5.load_tokenizer(args.tokenizer)
    folders = {"yelp_polarity": "yelp_polarity", "dbpedia": "dbpedia", "yahoo": "yahoo_answers"}
    print(f"{'task':14}{'examples':>9}{'prepare ex/s':>14}{'tokenise ex/s':>15}{'real tokens':>13}"
          f"{'ours padded':>13}{'pad to 256':>12}{'256 / ours':>11}")
    with tempfile.TemporaryDirectory() as root:
        for name in args.tasks.split(","):
            task, source = data.get_task(name), os.path.join(args.samples, folders.get(name, name))
            rate = lambda fn, n: n * args.repeats / sum(timed(fn) for _ in range(args.repeats))
            splits, _ = data.read_task(task, source)
            n = sum(len(r) for r in splits.values())
            prepare_rate = rate(lambda: data.prepare(task, source, root), n)
            rows = max(splits.values(), key=len)
            tokenise_rate = rate(lambda: data.tokenize(task, rows, tokenizer), len(rows))
            lens = data.lengths(data.tokenize(task, rows, tokenizer))
            real, ours, fixed = data.padding_stats(lens, data.epoch_batches(lens, 32, seed=42, epoch=0))
            print(f"{name:14}{n:9,}{prepare_rate:14,.0f}{tokenise_rate:15,.0f}{real:13,}{ours:13,}{fixed:12,}"
                  f"{fixed / ours:10.1f}x")


def eval_speed(args):
    """Examples/s of our evaluation (encoder once, then greedy decoding with the cache, or one packed pass
    over the label words) on random weights of a shape, with SST-2's label words (2 tokens + EOS each)."""
    device = pick_device(args.device)
    ours, hf = make_models(args.shape, torch.float32, device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (args.batch, args.src), generator=g).to(device)
    mask = torch.ones_like(ids)
    prompt = (torch.randn(args.prompt, SHAPES[args.shape]["d_model"], generator=g) * 0.5).to(device)
    labels = [[2841, 1], [1465, 1]]  # "negative", "positive" in T5's vocabulary
    methods = {"greedy (7 new tokens)": lambda: model_t5.generate_greedy(ours, ids, mask, prompt, 7),
               "rank (2 label words)": lambda: model_t5.score_candidates(ours, ids, mask, prompt, labels)}
    try:
        from peft import PromptTuningConfig, get_peft_model
        peft_model = get_peft_model(hf, PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=args.prompt))
        with torch.no_grad():
            peft_model.prompt_encoder.default.embedding.weight[:args.prompt] = prompt
        methods["PEFT generate (7 new)"] = lambda: peft_model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=7, min_new_tokens=7, do_sample=False, num_beams=1)
    except ImportError:
        pass
    print(f"evaluation, {args.shape} shape, batch {args.batch}, {args.src} source + {args.prompt} prompt tokens, "
          f"{device_words(device)}, median of {args.repeats}")
    print(f"{'':28}{'s/batch':>9}{'examples/s':>12}")
    for precision in ("fp32", "bf16"):
        autocast, _ = train.autocast_for(precision, device)
        for name, fn in methods.items():
            with torch.no_grad(), autocast():
                fn()
                times = [timed(fn, device) for _ in range(args.repeats)]
            median = statistics.median(times)
            print(f"{name + ', ' + precision:28}{median:9.3f}{args.batch / median:12.1f}")


def epoch_speed(args):
    """One training epoch (forward, backward, AdamW per batch, dropout 0.1) over a real dataset sample: our
    length-bucketed, dynamically padded batches; ours padded to 256 as the official recipe pads; and
    transformers + PEFT padded to 256 (the official stack); then one evaluation pass of ours vs PEFT."""
    device = pick_device(args.device)
    ours, hf = make_models(args.shape, torch.float32, device)
    tokenizer = model_t5.load_tokenizer(args.tokenizer)
    peft_model = None
    try:
        from peft import PromptTuningConfig, get_peft_model
        peft_model = get_peft_model(hf, PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=50))
    except ImportError:
        pass
    print(f"one epoch of prompt tuning (dropout 0.1), then one evaluation pass (greedy, {args.new_tokens} new "
          f"tokens, batch 64), over each sample's training rows; {args.shape} shape, batch {args.batch}, 50 prompt "
          f"vectors, fp32, {device_words(device)}, median of {args.repeats}; {versions()}")
    print(f"{'sample':8}{'rows':>5}{'train: ours s':>15}{'ours pad-256':>14}{'ratio':>7}{'PEFT pad-256':>14}"
          f"{'ratio':>7}{'eval: ours ex/s':>17}{'PEFT pad-256':>14}{'ratio':>7}")
    for name in args.tasks.split(","):
        task = data.get_task(name)
        splits, _ = data.read_task(task, f"{args.samples}/{name}")
        tokens = data.tokenize(task, splits["train"], tokenizer)
        lengths = data.lengths(tokens)
        bucketed = data.epoch_batches(lengths, args.batch, seed=42, epoch=0)
        shuffled = np.array_split(np.random.default_rng(42).permutation(len(lengths)), len(bucketed))
        collate = lambda idx: {k: v.to(device) for k, v in data.collate(tokens, idx).items()}

        def padded(batch):  # the official preprocessor: padding="max_length", max_length=256
            return (F.pad(batch["input_ids"], (0, data.MAX_SOURCE - batch["input_ids"].shape[1])),
                    F.pad(batch["attention_mask"], (0, data.MAX_SOURCE - batch["attention_mask"].shape[1])))

        def run_epoch(batches, pad, loss_of, params):
            optimizer = torch.optim.AdamW(params, lr=0.3, weight_decay=1e-5)
            for idx in batches:
                batch = collate(idx)
                ids, mask = padded(batch) if pad else (batch["input_ids"], batch["attention_mask"])
                loss_of(ids, mask, batch["labels"]).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        prompt = torch.nn.Parameter(torch.randn(50, ours.config.d_model, device=device) * 0.5)
        ours_loss = lambda ids, mask, labels: F.cross_entropy(
            ours(ids, model_t5.shift_right(labels), mask, prompt=prompt).flatten(0, 1), labels.flatten(),
            ignore_index=-100)
        epochs = {"ours": lambda: run_epoch(bucketed, False, ours_loss, [prompt]),
                  "ours pad-256": lambda: run_epoch(shuffled, True, ours_loss, [prompt])}
        ours.train()
        if peft_model is not None:
            peft_model.train()
            peft_loss = lambda ids, mask, labels: peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
            epochs["PEFT pad-256"] = lambda: run_epoch(shuffled, True, peft_loss,
                                                       [p for p in peft_model.parameters() if p.requires_grad])
        times = {variant: [] for variant in epochs}
        for _ in range(args.repeats):  # interleaved rounds, as in `step`: single epochs varied by a third here
            for variant, fn in epochs.items():
                times[variant].append(timed(fn, device))
        ours_s, fixed_s = statistics.median(times["ours"]), statistics.median(times["ours pad-256"])
        line = f"{name:8}{len(lengths):5,}{ours_s:15.1f}{fixed_s:14.1f}{fixed_s / ours_s:6.1f}x"
        if peft_model is not None:
            peft_s = statistics.median(times["PEFT pad-256"])
            line += f"{peft_s:14.1f}{peft_s / ours_s:6.1f}x"
        # evaluation: ours sorts by length and pads each batch to its longest; the official run padded to 256
        ours_eval = timed(lambda: evaluation.predict(ours, task, tokens, tokenizer, prompt.detach()[None], "generate",
                                                device=device, max_new_tokens=args.new_tokens, label=name), device)
        line += f"{len(lengths) / ours_eval:17.1f}"
        if peft_model is not None:
            def peft_eval():
                peft_model.eval()
                for start in range(0, len(lengths), 64):
                    ids, mask = padded(collate(np.arange(start, min(start + 64, len(lengths)))))
                    with torch.no_grad():
                        peft_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                            min_new_tokens=args.new_tokens, do_sample=False, num_beams=1)
            peft_eval_s = timed(peft_eval, device)
            line += f"{len(lengths) / peft_eval_s:14.1f}{peft_eval_s / ours_eval:6.1f}x"
        print(line, flush=True)


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


def memory(args):
    """Peak memory of each variant's training steps, each in a process of its own (same weights)."""
    device = pick_device(args.device)
    what = "GPU memory allocated by torch" if device.type == "cuda" else "resident memory"
    print(f"peak {what}, 2 training steps (dropout 0.1), {args.shape} shape, batch {args.batch}, "
          f"{args.src} source + 50 prompt + 3 target tokens, fp32, {device}")
    for name in ("ours", "transformers", "transformers + PEFT"):
        out = subprocess.run([sys.executable, __file__, "step", "--shape", args.shape, "--batch", str(args.batch),
                              "--src", str(args.src), "--device", str(device), "--only", name], capture_output=True,
                             text=True, check=True)
        print(f"{name:22}{out.stdout.split('peak_mb')[-1].strip():>8} MB")


def timed(fn, device=torch.device("cpu")):
    """Seconds of one call of fn; on a GPU, of the work it queued too (synchronised before and after)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


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


def step(args):
    device = pick_device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    ours, hf = make_models(args.shape, dtype, device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (args.batch, args.src), generator=g).to(device)
    labels = torch.randint(3, 32000, (args.batch, args.tgt), generator=g).to(device)
    init = (torch.randn(args.prompt, SHAPES[args.shape]["d_model"], generator=g) * 0.5).to(device)
    tokens = args.batch * (args.src + args.prompt + args.tgt)
    steps = training_steps(ours, hf, ids, labels, init, args.precision == "bf16-autocast", args.dropout)
    if args.only:  # one variant alone, for its peak memory (see `bench.py memory`)
        for _ in range(2):
            steps[args.only]()
        print(f"peak_mb {peak_memory_mb(device):.0f}")
        return
    decoder = decoder_lengths(ours, hf, steps)  # also the warm-up round
    times = {name: [] for name in steps}
    for _ in range(args.repeats):  # rounds interleave, so a slow spell of the machine hits every variant
        for name, fn in steps.items():
            times[name].append(timed(fn, device))
    print(f"prompt-tuning step (forward, backward, AdamW), {args.shape} shape, batch {args.batch}, {args.src} source "
          f"+ {args.prompt} prompt + {args.tgt} target tokens, {args.precision}, dropout {args.dropout}, "
          f"{device_words(device)}, median of {args.repeats}; {versions()}")
    print(f"{'':22}{'decoder':>8}{SPEED_HEADING}")
    ours_time = statistics.median(times["ours"])
    for name, ts in times.items():
        print(f"{name:22}{decoder[name]:8}{speed_columns(statistics.median(ts), tokens, ours_time)}")
    # the backward pass needs input gradients only (the weights are frozen): about one more forward
    flops = 2 * forward_flops(ours.config, args.batch, args.src + args.prompt, args.tgt)
    peak = matmul_rate(torch.bfloat16 if args.precision != "fp32" else torch.float32, device)
    print(f"ours: {flops / 1e9:,.0f} GFLOP per step, {flops / ours_time / 1e9:,.1f} GFLOP/s = "
          f"{flops / ours_time / peak:.0%} of this machine's {'bf16' if args.precision != 'fp32' else 'fp32'} "
          f"matmul rate ({peak / 1e9:,.0f} GFLOP/s, {MATMUL_N[device.type]}^3)")


SPEED_HEADING = f"{'s/step':>9}{'tokens/s':>10}{'ours is':>10}"  # the columns of speed_columns


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


def everything(args, parser):
    """The speed comparison in one run: training steps at the t5-small and t5-base shapes (fp32 and bf16
    autocast), then evaluation, one epoch over the real samples and peak memory at the chosen shape."""
    steps = [["step", "--shape", shape, *precision] for shape in ("t5-small", "t5-base")
             for precision in ([], ["--precision", "bf16-autocast"])]
    for argv in (*steps, ["eval", "--shape", args.shape], ["epoch", "--shape", args.shape],
                 ["memory", "--shape", args.shape]):
        argv += ["--device", args.device]
        print(f"\n$ python bench.py {' '.join(argv)}", flush=True)
        chosen = parser.parse_args(argv)
        chosen.run(chosen)


# -----------------------------------------------------------------------------
# packing: R runs that differ only in their prompt share each step of the frozen model (train.packed_loss)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the precisions a pack trains in (train.autocast_for)
EMULATED_BF16 = ("bf16: not timed: this CPU has no native bf16 (AVX512-BF16 or AMX), so PyTorch emulates it, about "
                 "100x slower than fp32 (train.bf16_is_emulated)")


def random_t5(cfg, device, precision="fp32"):
    """Our T5 with random weights of a config (nothing loaded), frozen, in the dtype tpv.py loads it in for this
    precision (train.weights_dtype), in training mode: dropout at the config's rate (0.1), as the recipe trains."""
    torch.manual_seed(0)
    model = model_t5.T5(cfg).requires_grad_(False).to(device).train()
    return model.to_dtype(train.weights_dtype(precision, device))


def random_batch(examples, source_len, target_len, vocab_size, device, seed=0):
    """A batch of random token ids: every source source_len long, every target target_len (no padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, min(32000, vocab_size), (examples, source_len), generator=g)
    labels = torch.randint(3, min(32000, vocab_size), (examples, target_len), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device)}


NO_SCALER = torch.amp.GradScaler("cpu", enabled=False)  # scale() returns the loss as it is


def pack_of(inits):
    """A pack: its prompts (R, n, d), trained from inits, and one AdamW over them (the recipe's lr and decay)."""
    prompts = torch.nn.Parameter(inits.clone())
    return prompts, torch.optim.AdamW([prompts], lr=0.3, weight_decay=1e-5)


def packed_step(model, pack, batch, autocast):
    """One step of train.train's loop for a pack, without its data loading, schedule and bookkeeping: the runs'
    losses per target token (train.packed_loss under autocast), the backward of their sum, each run's gradient
    clipped to norm 1, AdamW, zero_grad. -> the (R,) losses, read back as the loop reads them (a synchronisation
    per step)."""
    prompts, optimizer = pack
    # the batch has no padding: every label is a target token; no loss scaler (fp32 and bf16 need none)
    losses = train.packed_backward(model, prompts, batch, batch["labels"].numel(), autocast, NO_SCALER)
    train.clip_per_run(prompts.grad, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return losses.tolist()


def arm(inits, pack_size):
    """The runs of inits (R, n, d) in packs of at most pack_size, each with its own AdamW. One round steps every
    pack once: pack_size 1 trains the runs one after another, pack_size R all in one step."""
    return [pack_of(chunk) for chunk in inits.split(pack_size)]


def round_losses(model, packs, batch, autocast):
    """One step of every pack; every run's loss, in run order."""
    return [loss for pack in packs for loss in packed_step(model, pack, batch, autocast)]


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


PACK_DEFAULTS = {  # `bench.py pack`'s shapes and batches by device: the issue's settings on a GPU; on the CPU the
    "cuda": (["t5-small", "t5-base"], [2, 8, 16, 32]),  # issue's target alone (t5-small, batch 2), under a minute
    "cpu": (["t5-small"], [2]),
}


def pack_source_len(batch):
    """Source tokens of the issue's settings: the source tasks' batch 32 at the longest inputs, 256 tokens; the
    few-shot batches (2, 8, 16) at 100."""
    return data.MAX_SOURCE if batch >= 32 else 100


def pack_speed(args):
    """R runs one after another against the same R runs packed, in run·steps per second (runs x steps / s)."""
    device = pick_device(args.device)
    shapes, batches = (given or default for given, default in zip((args.shape, args.batch),
                                                                  PACK_DEFAULTS[device.type]))
    precisions = args.precision
    if "bf16" in precisions and train.bf16_is_emulated(device):
        print(EMULATED_BF16)
        precisions = [p for p in precisions if p != "bf16"]
    print(f"{args.runs} runs, one after another (alone: {args.runs} steps of one run each, each run its own AdamW) "
          f"and packed (one step of all {args.runs}, or of as many as fit the memory: train.largest_pack); a step "
          f"is train.train's: packed_loss under autocast, backward, per-run clipping, AdamW; random weights, "
          f"dropout 0.1, {args.prompt} prompt vectors + the source tokens, {args.tgt} target tokens; median of "
          f"{args.steps} rounds after a warm-up; {device_words(device)}")
    print(f"{'shape':10}{'precision':>10}{'batch':>6}{'source':>7}{'runs':>5}{'pack':>5}{'alone':>13}{'packed':>13}"
          f"{'packed/alone':>13}{'alone':>9}{'packed':>9}{'packed':>8}")
    print(f"{'':46}{'run-steps/s':>13}{'run-steps/s':>13}{'':13}{'TFLOP/s':>9}{'TFLOP/s':>9}{'of mm':>8}")
    for shape in shapes:
        for precision in precisions:
            model = random_t5(model_t5.T5Config(**SHAPES[shape]), device, precision)
            peak = matmul_rate(DTYPES[precision], device)
            for batch in batches:
                print(pack_row(model, shape, precision, batch, peak, args, device), flush=True)
    print(f"TFLOP/s: forward_flops x 2 per step (the backward pass computes activation gradients only: the weights "
          f"are frozen); of mm: the packed rate against this device's {MATMUL_N[device.type]}^3 matrix product in "
          f"the same precision, measured in this run")


def pack_row(model, shape, precision, batch, peak, args, device):
    """One line of `bench.py pack`: both arms timed on the same batch and initial prompts."""
    cfg, source = model.config, pack_source_len(batch)
    autocast, _ = train.autocast_for(precision, device)
    pack = min(args.runs, train.largest_pack(cfg, batch, source + args.prompt, args.tgt, precision, device))
    inits = torch.randn(args.runs, args.prompt, cfg.d_model, generator=torch.Generator().manual_seed(0)) * 0.5
    examples = random_batch(batch, source, args.tgt, cfg.vocab_size, device)
    arms = {name: arm(inits.to(device), size) for name, size in (("alone", 1), ("packed", pack))}
    seconds = medians({name: lambda packs=packs: round_losses(model, packs, examples, autocast)
                       for name, packs in arms.items()}, args.steps, device)
    flops = 2 * forward_flops(cfg, args.runs * batch, source + args.prompt, args.tgt)  # a round: every run's rows
    alone, packed = seconds["alone"], seconds["packed"]
    return (f"{shape:10}{precision:>10}{batch:6}{source:7}{args.runs:5}{pack:5}{args.runs / alone:13.4g}"
            f"{args.runs / packed:13.4g}{alone / packed:12.2f}x{flops / alone / 1e12:9.3g}{flops / packed / 1e12:9.3g}"
            f"{flops / packed / peak:8.0%}")


# -----------------------------------------------------------------------------
# estimate: the paper's grid in device-hours on this device, from a few timed packed steps

class TaskSize(NamedTuple):
    train: int  # examples of the paper's splits
    validation: int
    test: int
    source: float  # mean source tokens (truncated to 256; the prompt not counted)
    target: float  # mean target tokens (the label word and EOS)
    longest: int  # the longest target: the decoding steps of a greedy evaluation of a trained prompt


# Examples: data/splits.py's rule applied to the original distributions' split sizes (GLUE; SNLI without its "-"
# labels; SciTail's snli_format; Zhang et al.'s CSVs; IMDB; SST-5's trees): a large set gives 1,000 of its train to
# validation and tests on its original held-out split, a small set keeps its train and halves its held-out split.
# Token lengths: measured once, by hand, with data.tokenize and T5's vocabulary (../shared/assets/t5-spiece.model)
# over every row of the dataset samples in ../shared/data (rows after each). Some samples are small (dbpedia's holds
# class 1 only); a decoder token more or less moves a step's time by about 1 %.
TASK_SIZES = {
    "mnli": TaskSize(391_702, 1_000, 9_815, 51.7, 3.02, 5),  # 53 rows
    "qnli": TaskSize(103_743, 1_000, 5_463, 63.9, 5.51, 6),  # 300
    "sst2": TaskSize(66_349, 1_000, 872, 32.9, 2.00, 2),  # 1,172
    "yelp_polarity": TaskSize(559_000, 1_000, 38_000, 141.2, 2.00, 2),  # 4
    "dbpedia": TaskSize(559_000, 1_000, 70_000, 84.4, 2.00, 5),  # 10
    "trec": TaskSize(5_452, 250, 250, 27.7, 2.44, 5),  # 5,952
    "scitail": TaskSize(22_596, 1_000, 2_126, 46.5, 3.50, 5),  # 4
    "snli": TaskSize(548_367, 1_000, 9_824, 38.3, 2.97, 5),  # 296
    "ag_news": TaskSize(119_000, 1_000, 7_600, 78.1, 2.59, 4),  # 300
    "yahoo": TaskSize(1_399_000, 1_000, 60_000, 144.0, 2.10, 3),  # 10
    "imdb": TaskSize(24_000, 1_000, 25_000, 213.7, 2.00, 2),  # 22
    "sst5": TaskSize(8_544, 550, 551, 35.2, 2.29, 3),  # 1,701
    "qqp": TaskSize(362_846, 1_000, 40_430, 42.2, 4.44, 6),  # 18
    "mrpc": TaskSize(3_668, 204, 204, 71.4, 3.31, 6),  # 499
    "rte": TaskSize(2_490, 138, 139, 82.1, 5.50, 6),  # 577
    "cola": TaskSize(8_551, 521, 522, 16.4, 2.00, 2),  # 1,343
    "stsb": TaskSize(5_749, 750, 750, 41.2, 2.97, 3),  # 1,800
}
SOURCE_TASKS = "mnli,qnli,sst2,yelp_polarity,dbpedia,trec"  # the v1 grid (run.sh's defaults)
TRANSFER = "mnli,qnli:scitail,snli dbpedia,trec:ag_news,yahoo sst2,yelp_polarity:imdb,sst5"  # pair:targets, run.sh's
FEW_SHOT_INITS = 5  # random origin, the SPoT prompt of each source, the multi-task SPoT prompt, the TPV sum (run.sh)
PAPER_HOURS = "about 1,200 A100-PCIe-40GB GPU-hours for all its experiments (supplement A)"


class Timings:
    """Seconds of the grid's three kinds of work on this device, on random weights of the model's shape: a packed
    training step, a validation forward pass and a greedy evaluation. Each is timed at two source lengths (64 and
    256 tokens, + the prompt) and two target lengths (2 and 6), and interpolated bilinearly (extrapolated outside):
    the work is linear in each length and the cross-attention in their product; the encoder's self-attention,
    quadratic in the source, is about a tenth of its work at 306 tokens, so the straight line overestimates lengths
    in between by a few % at most. Each setting is timed once. Past max_rows rows (batch x pack), the time of one
    run of max_rows examples is scaled linearly (the same model work; a pack's AdamW, not timed then, is tiny)."""
    SOURCES, TARGETS = (64, 256), (2, 6)

    def __init__(self, cfg, precision, prompt_len, steps, max_rows, device, log=print):
        self.model, self.cfg, self.prompt_len = random_t5(cfg, device, precision), cfg, prompt_len
        self.autocast, _ = train.autocast_for(precision, device)
        self.steps, self.max_rows, self.device, self.log = steps, max_rows, device, log
        self.cache = {}
        # rows per inference forward, as train.validation_losses and evaluation.predict take them; read once, so
        # that the memory the timings cache cannot change them (and with them the settings timed)
        self.validation_rows = train.inference_rows(self.model, device, prompt_len, validation=True)
        self.generation_rows = train.inference_rows(self.model, device, prompt_len)

    def step(self, batch, pack, source, target):
        return self.interpolated("step", batch, pack, source, target)

    def validation(self, source, target):
        """Per example and run: train.validation_losses forwards validation_rows rows at a time, whatever the pack."""
        return self.interpolated("validation", self.validation_rows, 1, source, target) / self.validation_rows

    def generation(self, source, longest):
        """Per example: evaluation.predict decodes generation_rows examples at a time, one prompt."""
        return self.interpolated("generation", self.generation_rows, 1, source, longest) / self.generation_rows

    def interpolated(self, kind, batch, pack, source, target):
        (s0, s1), (t0, t1) = self.SOURCES, self.TARGETS
        x, y = (source - s0) / (s1 - s0), (target - t0) / (t1 - t0)
        at = lambda s, t: self.seconds(kind, batch, pack, s, t)
        return (1 - x) * ((1 - y) * at(s0, t0) + y * at(s0, t1)) + x * ((1 - y) * at(s1, t0) + y * at(s1, t1))

    def seconds(self, kind, batch, pack, source, target):
        rows = batch * pack
        if rows > self.max_rows:  # one run of max_rows examples: the same model work, scaled
            return self.seconds(kind, self.max_rows, 1, source, target) * rows / self.max_rows
        key = (kind, batch, pack, source, target)
        if key not in self.cache:
            self.cache[key] = self.time(*key)
            self.log(f"  timed {kind}: batch {batch} x {pack} runs, {source} source + {self.prompt_len} prompt, "
                     f"{target} target tokens: {self.cache[key]:.4f} s")
        return self.cache[key]

    def time(self, kind, batch, pack, source, target):
        model, cfg, autocast = self.model, self.cfg, self.autocast
        examples = random_batch(batch, source, target, cfg.vocab_size, self.device)
        inits = torch.randn(pack, self.prompt_len, cfg.d_model, device=self.device) * 0.5
        model.train(kind == "step")  # dropout in training steps only, as train.py and evaluation.py run them
        if kind == "step":
            trained = pack_of(inits)
            work = lambda: packed_step(model, trained, examples, autocast)
        elif kind == "validation":
            work = inference(lambda: train.packed_loss(model, inits, examples).tolist(), autocast)
        else:  # random weights never emit EOS: every example decodes all `target` tokens
            work = inference(lambda: model_t5.generate_greedy(model, examples["input_ids"],
                                                              examples["attention_mask"], inits[0], target).tolist(),
                             autocast)
        return medians({kind: work}, self.steps, self.device)[kind]


def inference(fn, autocast):
    """fn, called without autograd and under autocast, as evaluation runs."""
    def call():
        with torch.no_grad(), autocast():
            return fn()
    return call


@dataclass
class Cost:
    """What one experiment of the grid asks of the device."""
    runs: int = 0
    steps: int = 0  # training steps of all its packs
    packs: int = 0
    train_s: float = 0.0
    eval_s: float = 0.0


def mean_lengths(tasks, weights):
    """(source, target) token lengths of a mixture of tasks, weighted by their examples."""
    total = sum(weights)
    return tuple(sum(w * getattr(TASK_SIZES[t], f) for t, w in zip(tasks, weights)) / total
                 for f in ("source", "target"))


def tests_s(times, tasks, prompts):
    """Greedy evaluation of `prompts` prompts on each task's test set."""
    return prompts * sum(TASK_SIZES[t].test * times.generation(TASK_SIZES[t].source, TASK_SIZES[t].longest)
                         for t in tasks)


def train_command(cost, times, tasks, shots, n_runs, pack):
    """n_runs runs of one tpv.py train command (a task, or a multi-task pair) trained in packs of at most `pack`:
    their steps, their validation every eval_every steps, then each run's test evaluation (shots 0: that alone)."""
    config = train.recipe(",".join(tasks), shots)
    sizes = [TASK_SIZES[t] for t in tasks]
    if shots != 0:
        source, target = mean_lengths(tasks, [s.train for s in sizes])
        steps = config.max_steps or config.epochs * math.ceil(sum(s.train for s in sizes) / config.batch_size)
        chunks = [min(pack, n_runs - i) for i in range(0, n_runs, pack)]
        cost.steps += steps * len(chunks)
        cost.packs += len(chunks)
        cost.train_s += steps * sum(times.step(config.batch_size, n, source, target) for n in chunks)
        validations = math.ceil(steps / config.eval_every)  # train.due: every eval_every steps and the last
        cost.eval_s += validations * n_runs * sum(min(s.validation, config.validation_limit or s.validation)
                                                * times.validation(s.source, s.target) for s in sizes)
    cost.runs += n_runs
    cost.eval_s += tests_s(times, tasks, n_runs)


def grid_costs(times, origins, tasks, shots, transfer, pack_size):
    """{experiment: Cost} of run.sh's grid: the source prompts and the multi-task SPoT prompts of the transfer pairs
    both in `tasks`, every pair's zero-shot addition, cross-origin, few-shot transfer to the pairs' targets (the
    cosine similarities cost next to nothing). pack_size(tasks, shots, n_runs) -> the pack of a train command."""
    pairs = [(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1:]]
    groups = [(pair, targets) for pair, targets in transfer if set(pair) <= set(tasks)]
    costs = {name: Cost() for name in ("source prompts", "multi-task SPoT", "zero-shot addition", "cross-origin",
                                       "few-shot")}
    for task in tasks:
        train_command(costs["source prompts"], times, [task], None, origins, pack_size([task], None, origins))
    for pair, _ in groups:
        train_command(costs["multi-task SPoT"], times, pair, None, origins, pack_size(pair, None, origins))
    for a, b in pairs:  # per origin: the lambda sweep on validation, then the sum and each single prompt on test
        sizes = [TASK_SIZES[a], TASK_SIZES[b]]
        costs["zero-shot addition"].runs += origins
        costs["zero-shot addition"].eval_s += origins * (tests_s(times, [a, b], 2) + len(experiments.LAMBDAS) * sum(
            s.validation * times.generation(s.source, s.longest) for s in sizes))
    if origins > 1:  # origin_i + tau_j for every pair of origins
        costs["cross-origin"].runs += origins ** 2 * len(tasks)
        costs["cross-origin"].eval_s += tests_s(times, tasks, origins ** 2)
    n_runs = origins * FEW_SHOT_INITS  # one command per target and shot count
    for _, targets in groups:
        for target in targets:
            for n in shots:
                train_command(costs["few-shot"], times, [target], n, n_runs, pack_size([target], n, n_runs))
    return costs


def estimate(args):
    """The device-hours of run.sh's grid on this device (the paper's v1 grid by default), from timed steps."""
    device = pick_device(args.device)
    precision = train.resolve_precision(args.precision, device)
    if precision == "bf16" and train.bf16_is_emulated(device):
        sys.exit(f"bench.py estimate: {EMULATED_BF16}; estimate --precision fp32")
    cfg = model_config(args.model, args.models_dir)
    origins, tasks, shots = len(args.origins), args.tasks, args.shots
    max_rows = args.max_rows or (16 if device.type == "cpu" else math.inf)
    print(f"estimating run.sh's grid for {args.model} (d_model {cfg.d_model}, {cfg.num_layers}+"
          f"{cfg.num_decoder_layers} layers), {precision}, {device_words(device)}: {origins} origins, source tasks "
          f"{','.join(tasks)}, shots {','.join(map(str, shots))}; packs of "
          f"{args.pack or 'as many runs as fit (train.largest_pack at 256 source tokens)'}; greedy evaluation")
    times = Timings(cfg, precision, args.prompt, args.steps, max_rows, device)

    def pack_size(tasks, shots, n_runs):
        if args.pack:
            return min(args.pack, n_runs)
        batch = train.recipe(",".join(tasks), shots).batch_size
        longest = max(TASK_SIZES[t].longest for t in tasks)
        return min(n_runs, train.largest_pack(cfg, batch, data.MAX_SOURCE + args.prompt, longest, precision, device))

    costs = grid_costs(times, origins, tasks, shots, args.transfer, pack_size)
    print(f"{'experiment':20}{'runs':>7}{'steps':>11}{'packs':>7}{'s/step':>9}{'train h':>9}{'eval h':>9}"
          f"{'device-h':>10}")
    for name, c in costs.items():
        per_step = f"{c.train_s / c.steps:9.3f}" if c.steps else f"{'-':>9}"
        print(f"{name:20}{c.runs:7,}{c.steps:11,}{c.packs:7,}{per_step}{c.train_s / 3600:9.1f}{c.eval_s / 3600:9.1f}"
              f"{(c.train_s + c.eval_s) / 3600:10.1f}")
    total = sum(c.train_s + c.eval_s for c in costs.values()) / 3600
    print(f"{'total':71}{total:10.1f}")
    print("runs: trained runs (addition, cross-origin: prompts evaluated); steps: the training steps of all packs; "
          "eval h: the validation passes and the greedy test (and lambda sweep) evaluations")
    print(f"about {total:,.0f} device-hours on {device_words(device)}; the paper: {PAPER_HOURS}")


def model_config(name, models_dir):
    """The config of --model without its weights: config.json of a local folder (a path, models_dir/NAME or the
    Hugging Face cache, found as hub.py finds them; nothing is downloaded), else the shape of a known name."""
    folder = hub.find_local(name, models_dir, lambda f: os.path.exists(os.path.join(f, "config.json")))
    if folder and os.path.isfile(os.path.join(folder, "config.json")):
        return model_t5.T5Config.from_json(os.path.join(folder, "config.json"))
    shape = SHAPES.get(name.rstrip("/").rsplit("/", 1)[-1])
    if shape is None:
        sys.exit(f"bench.py estimate: {name}: no config.json there nor in the Hugging Face cache, and not one of "
                 f"the shapes bench.py knows ({', '.join(SHAPES)})")
    return model_t5.T5Config(**shape)


# -----------------------------------------------------------------------------
# Llama: a prompt-tuning step of ours against transformers + PEFT, and the peak memory of loading a checkpoint

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
    the tokens before it (the first given the prompt alone); ours computes it as training does (train.packed_loss:
    model_llama.token_losses, one run), PEFT from labels = the tokens."""
    from peft import PromptTuningConfig, get_peft_model
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    prompt = torch.nn.Parameter(init.clone())

    def ours_loss():
        with autocast():
            return train.packed_loss(ours, prompt[None], batch)[0] / ids.numel()
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
    if args.precision != "fp32" and train.bf16_is_emulated(device):
        sys.exit(f"bench.py llama-step: {EMULATED_BF16}; llama-step --precision fp32")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    autocast, _ = train.autocast_for("bf16" if args.precision == "bf16-autocast" else "fp32", device)
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
    print(f"ours: the loss as training computes it (train.packed_loss); PEFT: labels = the tokens. tokens/s counts "
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
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "load", "--measure", folder,
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


def transfer_groups(text):
    """argparse type of --transfer: 'a,b:t1,t2 c,d:t3' -> [([a, b], [t1, t2]), ([c, d], [t3])], known tasks only."""
    groups = []
    for group in text.split():
        pair, _, targets = group.partition(":")
        groups.append((comma_list(choices=TASK_SIZES)(pair), comma_list(choices=TASK_SIZES)(targets)))
        if len(groups[-1][0]) != 2:
            raise argparse.ArgumentTypeError(f"{group!r}: a group is two source tasks, ':' and its targets")
    return groups


# each command: (what it measures, {option: default, (default, help) or (default, help, argparse keywords)});
# without keywords --shape takes one of SHAPES, --precision one of step's precisions, others the default's type
SAMPLES, TOKENIZER = "../shared/data", "../shared/assets/t5-spiece.model"
DEVICE = ("auto", "cpu, cuda or cuda:N; auto: cuda when PyTorch sees a GPU")
COMMANDS = {
    "step": (step, "prompt-tuning step time, ours vs transformers", {
        "shape": "t5-small", "batch": 8, "src": (256, "source tokens per example"), "prompt": (50, "soft prompt "
        "vectors"), "tgt": (3, "target tokens per example"), "precision": ("fp32", "fp32, bf16-autocast (fp32 "
        "weights under bf16 autocast) or bf16 (bf16 weights)"), "dropout": (0.1, "dropout rate of every variant "
        "(default: T5's 0.1, as the recipe trains; 0 measures the matrix work alone)"), "repeats": 5,
        "only": (None, argparse.SUPPRESS), "device": DEVICE}),
    "memory": (memory, "peak memory of each variant's training step",
               {"shape": "t5-small", "batch": 8, "src": 256, "device": DEVICE}),
    "parity": (parity, "logit differences against transformers per config family",
               {"batch": 4, "src": 128, "tgt": 8, "device": DEVICE}),
    "data": (data_speed, "data preparation and tokenisation speed, padding overhead", {
        "samples": (SAMPLES, "the dataset samples folder"), "tokenizer": TOKENIZER,
        "tasks": "mnli,snli,sst2,qnli,trec,mrpc,rte,cola,stsb,sst5,ag_news", "repeats": 3}),
    "eval": (eval_speed, "evaluation speed: greedy generation and rank scoring",
             {"shape": "t5-small", "batch": 64, "src": 128, "prompt": 50, "repeats": 3, "device": DEVICE}),
    "epoch": (epoch_speed, "one epoch over real samples: bucketed batches vs padding to 256", {
        "shape": "t5-small", "batch": 32, "samples": SAMPLES, "tokenizer": TOKENIZER, "tasks": "mnli,sst2",
        "new-tokens": (7, "decoding steps of both evaluations"),
        "repeats": (1, "training epochs per variant (the median is shown)"), "device": DEVICE}),
    "pack": (pack_speed, "R runs packed into one training step against the same runs one after another", {
        "runs": (10, "R, the runs"),
        "batch": (None, "comma list of batch sizes; 32 runs 256 source tokens, smaller ones 100 (default: 2,8,16,32 "
                  "on a GPU, 2 on the CPU)", {"type": comma_list(int)}),
        "shape": (None, "comma list of shapes (default: t5-small,t5-base on a GPU, t5-small on the CPU)",
                  {"type": comma_list(choices=SHAPES)}),
        "precision": (["fp32", "bf16"], "comma list of fp32, bf16 (autocast, as training runs it; not timed on a "
                      "CPU that emulates it)", {"type": comma_list(choices=DTYPES)}),
        "prompt": (50, "prompt vectors"), "tgt": (4, "target tokens per example"),
        "steps": (3, "timed rounds (median) after one warm-up round"), "device": DEVICE}),
    "llama-step": (llama_step, "prompt-tuning step of our Llama vs transformers + PEFT (CAUSAL_LM)", {
        "shape": ("llama3-small", "llama3-small (Llama 3's ratios: 4 layers, hidden 1024, 16 heads, 4 key/value heads, "
                  "intermediate 3584, vocab 32000, llama3 rope) or tiny", {"choices": LLAMA_SHAPES}),
        "vocab": (None, "vocabulary size (default: the shape's; Llama 3's is 128256)", {"type": int}),
        "batch": 4, "tokens": (128, "tokens per example"), "prompt": (100, "soft prompt vectors"),
        "precision": ("fp32", "fp32, bf16-autocast (fp32 weights under bf16 autocast) or bf16 (bf16 weights)"),
        "attention": (["sdpa", "eager"], "comma list of transformers' attn_implementation values to time (sdpa: "
                      "its default)", {"type": comma_list(choices=["sdpa", "eager"])}),
        "repeats": (5, "timed rounds (median) after one warm-up round"), "device": DEVICE}),
    "load": (load_memory, "peak resident memory of load_llama in a fresh process: one file, and shards", {
        "size-gb": (3.0, "the random checkpoint's size in bf16, GB (2^30 bytes)"),
        "max-shard-gb": (1.0, "the shards' largest size, GB"),
        "dtype": (["bf16", "fp32"], "comma list of loaded dtypes", {"type": comma_list(choices=DTYPES)}),
        "dir": (None, "where to write the checkpoint (default: the temp folder); deleted at the end"),
        "measure": (None, argparse.SUPPRESS)}),
    "estimate": (estimate, "device-hours of run.sh's grid here, from a few timed packed steps", {
        "model": ("t5-base", "a model folder, a name found in --models-dir or the Hugging Face cache (its "
                  "config.json), or a shape bench.py knows; nothing is downloaded"),
        "models-dir": ("models", "where tpv.py keeps downloaded models"),
        "origins": (cli.origin_list("0-9"), "origins: 0-9, 0,3,5 or 0-2,7", {"type": cli.origin_list}),
        "tasks": (SOURCE_TASKS.split(","), "comma list of source tasks", {"type": comma_list(choices=TASK_SIZES)}),
        "shots": (experiments.SHOTS, "comma list of few-shot training set sizes (0: evaluation only)",
                  {"type": comma_list(int)}),
        "transfer": (transfer_groups(TRANSFER), f"few-shot groups, 'SOURCE,SOURCE:TARGET,...' separated by spaces "
                     f"(default: the paper's, {TRANSFER!r})", {"type": transfer_groups}),
        "pack": (None, "at most N runs per training step (default: as many as fit, train.largest_pack)",
                 {"type": int}),
        "precision": ("auto", "auto (bf16 on a GPU, fp32 on the CPU), fp32 or bf16", {"choices": ["auto", "fp32",
                                                                                                   "bf16"]}),
        "prompt": (50, "prompt vectors"),
        "steps": (2, "timed calls (median) of each setting after one warm-up call"),
        "max-rows": (None, "time at most N rows (batch x pack) at once and scale linearly above (default: 16 on "
                     "the CPU, where time grows about linearly with the rows from 8 on; no limit on a GPU)",
                     {"type": int}),
        "device": DEVICE}),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("all", help="step (t5-small and t5-base shapes), eval, epoch and memory in one run")
    p.add_argument("--shape", choices=SHAPES, default="t5-small", help="the shape of eval, epoch and memory")
    p.add_argument("--device", default=DEVICE[0], help=DEVICE[1])
    p.set_defaults(run=lambda args: everything(args, parser))
    for name, (run, help_text, options) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        for option, spec in options.items():
            default, text, kind = (*spec, None)[:3] if isinstance(spec, tuple) else (spec, None, None)
            if kind is None:
                kind = {"shape": {"choices": SHAPES}, "precision": {"choices": ["fp32", "bf16-autocast", "bf16"]}}.get(
                    option, {"type": type(default)} if default is not None else {})
            p.add_argument(f"--{option}", **{"default": default, "help": text, **kind})
        p.set_defaults(run=run)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
