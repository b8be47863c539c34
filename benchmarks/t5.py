"""
Our T5 against Hugging Face transformers (and transformers + PEFT, the official stack), side by side in one run on
the same random weights: logit parity, the prompt-tuning step, evaluation, one epoch over the dataset samples,
data preparation, and peak memory.

    python bench.py all                    # the speed comparison in one run (step x2 shapes, eval, epoch, memory)
    python bench.py step --shape t5-base --precision bf16-autocast
    python bench.py parity | data | eval | epoch | memory

They need `transformers` (pip install -r requirements-test.txt), which is not a run-time dependency.
"""
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import common
from benchmarks.common import (BENCH, MATMUL_N, SHAPES, SPEED_HEADING, data, device_words, evaluation,
                               forward_flops, matmul_rate, model_t5, peak_memory_mb, pick_device, same_weights,
                               speed_columns, timed, updater, versions)


def make_models(shape, dtype, device=torch.device("cpu")):
    from transformers import T5Config, T5ForConditionalGeneration
    ours, (hf,) = same_weights(lambda: T5ForConditionalGeneration(T5Config(vocab_size=32128, decoder_start_token_id=0,
                                                                           **SHAPES[shape])),
                               model_t5.load_t5, dtype, device)
    return ours, hf


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
        autocast = common.autocast_for(precision, device)
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
        print(epoch_row(name, ours, peft_model, tokenizer, args, device), flush=True)


def epoch_row(name, ours, peft_model, tokenizer, args, device):
    """One line of `bench.py epoch`: a sample's training epochs, then its evaluation passes."""
    task = data.get_task(name)
    splits, _ = data.read_task(task, f"{args.samples}/{name}")
    tokens = data.tokenize(task, splits["train"], tokenizer)
    lengths = data.lengths(tokens)
    collate = lambda idx: {k: v.to(device) for k, v in data.collate(tokens, idx).items()}
    prompt = torch.nn.Parameter(torch.randn(50, ours.config.d_model, device=device) * 0.5)
    times = epoch_times(ours, peft_model, prompt, lengths, collate, args, device)
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
    return line


def padded(batch):
    """(input_ids, attention_mask) padded to 256, as the official preprocessor pads (padding="max_length")."""
    return (F.pad(batch["input_ids"], (0, data.MAX_SOURCE - batch["input_ids"].shape[1])),
            F.pad(batch["attention_mask"], (0, data.MAX_SOURCE - batch["attention_mask"].shape[1])))


def epoch_times(ours, peft_model, prompt, lengths, collate, args, device):
    """{variant: seconds of each of its epochs}: ours on bucketed batches and padded to 256, PEFT padded to 256."""
    bucketed = data.epoch_batches(lengths, args.batch, seed=42, epoch=0)
    shuffled = np.array_split(np.random.default_rng(42).permutation(len(lengths)), len(bucketed))

    def run_epoch(batches, pad, loss_of, params):
        optimizer = torch.optim.AdamW(params, lr=0.3, weight_decay=1e-5)
        for idx in batches:
            batch = collate(idx)
            ids, mask = padded(batch) if pad else (batch["input_ids"], batch["attention_mask"])
            loss_of(ids, mask, batch["labels"]).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

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
    return times


def memory(args):
    """Peak memory of each variant's training steps, each in a process of its own (same weights)."""
    device = pick_device(args.device)
    what = "GPU memory allocated by torch" if device.type == "cuda" else "resident memory"
    print(f"peak {what}, 2 training steps (dropout 0.1), {args.shape} shape, batch {args.batch}, "
          f"{args.src} source + 50 prompt + 3 target tokens, fp32, {device}")
    for name in ("ours", "transformers", "transformers + PEFT"):
        out = subprocess.run([sys.executable, BENCH, "step", "--shape", args.shape, "--batch", str(args.batch),
                              "--src", str(args.src), "--device", str(device), "--only", name], capture_output=True,
                             text=True, check=True)
        print(f"{name:22}{out.stdout.split('peak_mb')[-1].strip():>8} MB")


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
