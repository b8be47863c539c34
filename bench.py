"""
Benchmarks, side by side in one run on the same random weights: our T5 against Hugging Face transformers.

    python bench.py all                    # the speed comparison in one run (step x2 shapes, eval, epoch, memory)
    python bench.py step                   # prompt-tuning step: t5-small shape, batch 8, 256 source, 50 prompt
    python bench.py step --shape t5-base --precision bf16-autocast
    python bench.py parity                 # logit differences per config family, fp32 and bf16
    python bench.py data                   # prepare and tokenisation speed, padding of our batches vs 256
    python bench.py eval                   # evaluation examples/s: greedy generation and rank scoring
    python bench.py epoch                  # one epoch over the MNLI and SST-2 samples vs padding to 256
    python bench.py memory                 # peak resident memory of each variant's training step

`step` measures forward, loss, backward to the prompt and the AdamW update in training mode (dropout 0.1, as the
recipe trains), and reports medians over repeats.
Needs `transformers` (pip install -r requirements-test.txt); it is not a run-time dependency.
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import data
import evaluation
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
    "tiny": dict(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, feed_forward_proj="relu"),  # for tests
}


def make_models(shape, dtype):
    from transformers import T5Config, T5ForConditionalGeneration
    torch.manual_seed(0)
    hf = T5ForConditionalGeneration(T5Config(vocab_size=32128, decoder_start_token_id=0, **SHAPES[shape]))
    with torch.no_grad():  # trained T5s have layer norm scales far from 1; random ones keep the test honest
        for name, p in hf.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = model_t5.load_t5(folder, dtype=dtype)
        hf = T5ForConditionalGeneration.from_pretrained(folder).to(dtype).eval()  # .to: 4.44 (the paper's) too
    return ours, hf.requires_grad_(False)


def forward_flops(cfg, batch, src, tgt):
    """Matrix-multiply FLOPs of one forward pass (2 per multiply-add); src counts prompt + source tokens."""
    inner, ff = cfg.num_heads * cfg.d_kv, (3 if cfg.is_gated_act else 2) * cfg.d_model * cfg.d_ff
    enc = cfg.num_layers * src * (4 * cfg.d_model * inner + ff + 2 * src * inner)
    dec = cfg.num_decoder_layers * (tgt * (6 * cfg.d_model * inner + ff + 2 * tgt * inner + 2 * src * inner)
                                    + src * 2 * cfg.d_model * inner)  # cross-attention keys/values of the encoder
    return 2 * batch * (enc + dec + tgt * cfg.d_model * cfg.vocab_size)


def matmul_rate(dtype, n=2048, repeats=5):
    """FLOP/s of this machine's (n x n) @ (n x n), the best of a few tries."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    return 2 * n ** 3 / min(timed(lambda: a @ b) for _ in range(repeats))


def training_steps(ours, hf, ids, labels, init, autocast, dropout):
    """{name: one prompt-tuning step (forward, loss, backward, AdamW update)} on the same batch and weights,
    in training mode with the given dropout rate (the recipe trains with T5's 0.1)."""
    ctx = lambda: torch.autocast("cpu", torch.bfloat16, enabled=autocast)
    model_t5.set_dropout(ours.train(), dropout)
    hf.train()
    for module in hf.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout
        elif isinstance(getattr(module, "dropout", None), float):  # T5Attention calls F.dropout(p=self.dropout)
            module.dropout = dropout
    prompt_ours, prompt_hf = (init.clone().requires_grad_() for _ in range(2))
    optimizers = {}

    def update(name, params, loss):
        loss.backward()
        optimizers.setdefault(name, torch.optim.AdamW(params, lr=0.3, weight_decay=1e-5)).step()
        optimizers[name].zero_grad(set_to_none=True)
        return loss.item()

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
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (args.batch, args.src), generator=g)
    mask = torch.ones_like(ids)
    mask[0, args.src // 2:] = 0
    dec = model_t5.shift_right(torch.randint(3, 32000, (args.batch, args.tgt), generator=g))
    print(f"logits of ours vs {versions()}, random weights, batch {args.batch}, "
          f"{args.src} source (one row half padding), {args.tgt} decoder tokens")
    print(f"{'family':16}{'dtype':>7}{'max |diff|':>12}{'max |logit|':>13}{'relative':>11}{'argmax same':>13}")
    for shape in ("t5-small", "t5-v1_1-like", "flan-t5-small", "asymmetric"):
        for dtype in (torch.float32, torch.bfloat16):
            ours, hf = make_models(shape, dtype)
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
    ours, hf = make_models(args.shape, torch.float32)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (args.batch, args.src), generator=g)
    mask = torch.ones_like(ids)
    prompt = torch.randn(args.prompt, SHAPES[args.shape]["d_model"], generator=g) * 0.5
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
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'':28}{'s/batch':>9}{'examples/s':>12}")
    for precision in ("fp32", "bf16"):
        autocast, _ = train.autocast_for(precision, torch.device("cpu"))
        for name, fn in methods.items():
            with torch.no_grad(), autocast():
                fn()
                times = [timed(fn) for _ in range(args.repeats)]
            median = statistics.median(times)
            print(f"{name + ', ' + precision:28}{median:9.3f}{args.batch / median:12.1f}")


def epoch_speed(args):
    """One training epoch (forward, backward, AdamW per batch, dropout 0.1) over a real dataset sample: our
    length-bucketed, dynamically padded batches; ours padded to 256 as the official recipe pads; and
    transformers + PEFT padded to 256 (the official stack); then one evaluation pass of ours vs PEFT."""
    ours, hf = make_models(args.shape, torch.float32)
    tokenizer = model_t5.load_tokenizer(args.tokenizer)
    peft_model = None
    try:
        from peft import PromptTuningConfig, get_peft_model
        peft_model = get_peft_model(hf, PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=50))
    except ImportError:
        pass
    print(f"one epoch of prompt tuning (dropout 0.1), then one evaluation pass (greedy, {args.new_tokens} new "
          f"tokens, batch 64), over each sample's training rows; {args.shape} shape, batch {args.batch}, 50 prompt "
          f"vectors, fp32, {torch.get_num_threads()} threads, median of {args.repeats}; {versions()}")
    print(f"{'sample':8}{'rows':>5}{'train: ours s':>15}{'ours pad-256':>14}{'ratio':>7}{'PEFT pad-256':>14}"
          f"{'ratio':>7}{'eval: ours ex/s':>17}{'PEFT pad-256':>14}{'ratio':>7}")
    for name in args.tasks.split(","):
        task = data.get_task(name)
        splits, _ = data.read_task(task, f"{args.samples}/{name}")
        tokens = data.tokenize(task, splits["train"], tokenizer)
        lengths = data.lengths(tokens)
        bucketed = data.epoch_batches(lengths, args.batch, seed=42, epoch=0)
        shuffled = np.array_split(np.random.default_rng(42).permutation(len(lengths)), len(bucketed))

        def padded(batch):  # the official preprocessor: padding="max_length", max_length=256
            return (F.pad(batch["input_ids"], (0, data.MAX_SOURCE - batch["input_ids"].shape[1])),
                    F.pad(batch["attention_mask"], (0, data.MAX_SOURCE - batch["attention_mask"].shape[1])))

        def run_epoch(batches, pad, loss_of, params):
            optimizer = torch.optim.AdamW(params, lr=0.3, weight_decay=1e-5)
            for idx in batches:
                batch = data.collate(tokens, idx)
                ids, mask = padded(batch) if pad else (batch["input_ids"], batch["attention_mask"])
                loss_of(ids, mask, batch["labels"]).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        prompt = torch.nn.Parameter(torch.randn(50, ours.config.d_model) * 0.5)
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
                times[variant].append(timed(fn))
        ours_s, fixed_s = statistics.median(times["ours"]), statistics.median(times["ours pad-256"])
        line = f"{name:8}{len(lengths):5,}{ours_s:15.1f}{fixed_s:14.1f}{fixed_s / ours_s:6.1f}x"
        if peft_model is not None:
            peft_s = statistics.median(times["PEFT pad-256"])
            line += f"{peft_s:14.1f}{peft_s / ours_s:6.1f}x"
        # evaluation: ours sorts by length and pads each batch to its longest; the official run padded to 256
        ours_eval = timed(lambda: evaluation.predict(ours, task, tokens, tokenizer, prompt.detach(), "generate",
                                                max_new_tokens=args.new_tokens, label=name))
        line += f"{len(lengths) / ours_eval:17.1f}"
        if peft_model is not None:
            def peft_eval():
                peft_model.eval()
                for start in range(0, len(lengths), 64):
                    ids, mask = padded(data.collate(tokens, np.arange(start, min(start + 64, len(lengths)))))
                    with torch.no_grad():
                        peft_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                            min_new_tokens=args.new_tokens, do_sample=False, num_beams=1)
            peft_eval_s = timed(peft_eval)
            line += f"{len(lengths) / peft_eval_s:14.1f}{peft_eval_s / ours_eval:6.1f}x"
        print(line, flush=True)


def peak_rss_mb():
    """This process's peak resident memory. VmHWM, because ru_maxrss survives exec on Linux: a child started
    by a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory(args):
    """Peak resident memory of each variant's training steps, each in a process of its own (same weights)."""
    print(f"peak resident memory, 2 training steps (dropout 0.1), {args.shape} shape, batch {args.batch}, "
          f"{args.src} source + 50 prompt + 3 target tokens, fp32")
    for name in ("ours", "transformers", "transformers + PEFT"):
        out = subprocess.run([sys.executable, __file__, "step", "--shape", args.shape, "--batch", str(args.batch),
                              "--src", str(args.src), "--only", name], capture_output=True, text=True, check=True)
        print(f"{name:22}{out.stdout.split('peak_rss_mb')[-1].strip():>8} MB")


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def step(args):
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    ours, hf = make_models(args.shape, dtype)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (args.batch, args.src), generator=g)
    labels = torch.randint(3, 32000, (args.batch, args.tgt), generator=g)
    init = torch.randn(args.prompt, SHAPES[args.shape]["d_model"], generator=g) * 0.5
    tokens = args.batch * (args.src + args.prompt + args.tgt)
    steps = training_steps(ours, hf, ids, labels, init, args.precision == "bf16-autocast", args.dropout)
    if args.only:  # one variant alone, for its peak memory (see `bench.py memory`)
        for _ in range(2):
            steps[args.only]()
        print(f"peak_rss_mb {peak_rss_mb():.0f}")
        return
    decoder = decoder_lengths(ours, hf, steps)  # also the warm-up round
    times = {name: [] for name in steps}
    for _ in range(args.repeats):  # rounds interleave, so a slow spell of the machine hits every variant
        for name, fn in steps.items():
            times[name].append(timed(fn))
    print(f"prompt-tuning step (forward, backward, AdamW), {args.shape} shape, batch {args.batch}, {args.src} source "
          f"+ {args.prompt} prompt + {args.tgt} target tokens, {args.precision}, dropout {args.dropout}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}; {versions()}")
    print(f"{'':22}{'decoder':>8}{'s/step':>9}{'tokens/s':>10}{'ours is':>10}")
    ours_time = statistics.median(times["ours"])
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"{name:22}{decoder[name]:8}{median:9.3f}{tokens / median:10,.0f}{median / ours_time:9.2f}x")
    # the backward pass needs input gradients only (the weights are frozen): about one more forward
    flops = 2 * forward_flops(ours.config, args.batch, args.src + args.prompt, args.tgt)
    peak = matmul_rate(torch.bfloat16 if args.precision != "fp32" else torch.float32)
    print(f"ours: {flops / 1e9:,.0f} GFLOP per step, {flops / ours_time / 1e9:,.1f} GFLOP/s = "
          f"{flops / ours_time / peak:.0%} of this machine's {'bf16' if args.precision != 'fp32' else 'fp32'} "
          f"matmul rate ({peak / 1e9:,.0f} GFLOP/s, 2048^3)")


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
        print(f"\n$ python bench.py {' '.join(argv)}", flush=True)
        chosen = parser.parse_args(argv)
        chosen.run(chosen)


# each command: (what it measures, {option: default or (default, help)}); --shape takes one of SHAPES
SAMPLES, TOKENIZER = "../shared/data", "../shared/assets/t5-spiece.model"
COMMANDS = {
    "step": (step, "prompt-tuning step time, ours vs transformers", {
        "shape": "t5-small", "batch": 8, "src": (256, "source tokens per example"), "prompt": (50, "soft prompt "
        "vectors"), "tgt": (3, "target tokens per example"), "precision": ("fp32", "fp32, bf16-autocast (fp32 "
        "weights under bf16 autocast) or bf16 (bf16 weights)"), "dropout": (0.1, "dropout rate of every variant "
        "(default: T5's 0.1, as the recipe trains; 0 measures the matrix work alone)"), "repeats": 5,
        "only": (None, argparse.SUPPRESS)}),
    "memory": (memory, "peak resident memory of each variant's training step",
               {"shape": "t5-small", "batch": 8, "src": 256}),
    "parity": (parity, "logit differences against transformers per config family", {"batch": 4, "src": 128, "tgt": 8}),
    "data": (data_speed, "data preparation and tokenisation speed, padding overhead", {
        "samples": (SAMPLES, "the dataset samples folder"), "tokenizer": TOKENIZER,
        "tasks": "mnli,snli,sst2,qnli,trec,mrpc,rte,cola,stsb,sst5,ag_news", "repeats": 3}),
    "eval": (eval_speed, "evaluation speed: greedy generation and rank scoring",
             {"shape": "t5-small", "batch": 64, "src": 128, "prompt": 50, "repeats": 3}),
    "epoch": (epoch_speed, "one epoch over real samples: bucketed batches vs padding to 256", {
        "shape": "t5-small", "batch": 32, "samples": SAMPLES, "tokenizer": TOKENIZER, "tasks": "mnli,sst2",
        "new-tokens": (7, "decoding steps of both evaluations"),
        "repeats": (1, "training epochs per variant (the median is shown)")}),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("all", help="step (t5-small and t5-base shapes), eval, epoch and memory in one run")
    p.add_argument("--shape", choices=SHAPES, default="t5-small", help="the shape of eval, epoch and memory")
    p.set_defaults(run=lambda args: everything(args, parser))
    for name, (run, help_text, options) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        for option, spec in options.items():
            default, text = spec if isinstance(spec, tuple) else (spec, None)
            kind = {"shape": {"choices": SHAPES}, "precision": {"choices": ["fp32", "bf16-autocast", "bf16"]}}.get(
                option, {"type": type(default)} if default is not None else {})
            p.add_argument(f"--{option}", default=default, help=text, **kind)
        p.set_defaults(run=run)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
