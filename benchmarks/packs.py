"""
Packed training against the same runs one after another: R runs that differ only in their prompt share each step
of the frozen model (model_t5.run_losses), timed in run-steps per second, with the rate of the device's matrix
product beside them. Its packed step (train.train's step, without data loading) also serves the grid estimate.

    python bench.py pack                   # 10 runs packed vs one after another (few-shot batches)
    python bench.py pack --shape t5-base --batch 2,8,16,32 --precision bf16 --runs 50
"""
import torch

from benchmarks import common
from benchmarks.common import (DTYPES, EMULATED_BF16, MATMUL_N, SHAPES, data, device_words, forward_flops,
                               matmul_rate, medians, model_t5, pick_device, random_batch, random_t5)




def pack_of(inits):
    """A pack: its prompts (R, n, d), trained from inits, and one AdamW over them (the recipe's lr and decay)."""
    prompts = torch.nn.Parameter(inits.clone())
    return prompts, torch.optim.AdamW([prompts], lr=0.3, weight_decay=1e-5)


def packed_step(model, pack, batch, autocast):
    """One step of train.train's loop for a pack, without its data loading, schedule and bookkeeping: the runs'
    losses per target token (model_t5.run_losses under autocast), the backward of their sum, each run's gradient
    clipped to norm 1, AdamW, zero_grad. -> the (R,) losses, read back as the loop reads them (a synchronisation
    per step)."""
    prompts, optimizer = pack
    # the batch has no padding: every label is a target token; no loss scaler (fp32 and bf16 need none)
    losses = common.forward_backward(model, prompts, batch, batch["labels"].numel(), autocast)
    common.clip_per_run(prompts.grad, 1.0)
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
    if "bf16" in precisions and common.bf16_is_emulated(device):
        print(EMULATED_BF16)
        precisions = [p for p in precisions if p != "bf16"]
    print(f"{args.runs} runs, one after another (alone: {args.runs} steps of one run each, each run its own AdamW) "
          f"and packed (one step of all {args.runs}, or of as many as fit the memory: model_t5.largest_pack); a step "
          f"is train.train's: the family's run_losses under autocast, backward, per-run clipping, AdamW; random weights, "
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
    autocast = common.autocast_for(precision, device)
    pack = min(args.runs, common.largest_pack(cfg, batch, source + args.prompt, args.tgt, precision, device))
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
