"""
Benchmarks, side by side in one run on the same random weights: our T5 against Hugging Face transformers; and
packed training (R runs in one step) against the same runs one after another, and what the paper's grid costs.
This file is their command line; each concern lives in benchmarks/: t5.py (ours vs transformers + PEFT), packs.py,
estimate.py (prices the lines of ./run.sh --plan), llama.py, and common.py (what they share).

    python bench.py all                    # the speed comparison in one run (step x2 shapes, eval, epoch, memory)
    python bench.py step                   # prompt-tuning step: t5-small shape, batch 8, 256 source, 50 prompt
    python bench.py step --shape t5-base --precision bf16-autocast
    python bench.py parity                 # logit differences per config family, fp32 and bf16
    python bench.py data                   # prepare and tokenisation speed, padding of our batches vs 256
    python bench.py eval                   # evaluation examples/s: greedy generation and rank scoring
    python bench.py epoch                  # one epoch over the MNLI and SST-2 samples vs padding to 256
    python bench.py memory                 # peak memory of each variant's training step
    python bench.py pack                   # 10 runs packed vs one after another, run-steps/s (few-shot batches)
    python bench.py estimate --model t5-base   # device-hours of ./run.sh --plan's grid here (./run.sh --estimate)
    python bench.py llama-step             # our Llama vs transformers + PEFT: prompt-tuning step, 4 x 128 tokens
    python bench.py load --size-gb 3       # peak resident memory of load_llama (fresh process), file and shards
    python bench.py shared-prefix          # decoder-only step and evaluation on SmolLM2: shared prefix, without, PEFT

`step` measures forward, loss, backward to the prompt and the AdamW update in training mode (dropout 0.1, as the
recipe trains), and reports medians over repeats. Every command that runs a model takes --device (auto: CUDA
when there is a GPU). step, parity, eval, epoch, memory, llama-step and shared-prefix need `transformers` (pip install -r
requirements-test.txt), which is not a run-time dependency; pack runs our T5 alone, estimate our T5 or Llama, load
our Llama.
"""
import argparse

from benchmarks import estimate, llama, packs, shared_prefix, t5
from benchmarks.common import DTYPES, SHAPES, comma_list, random_t5  # noqa: F401 (random_t5: test_tpv.py's)
from benchmarks.estimate import transfer_groups
from benchmarks.llama import LLAMA_SHAPES


# without keywords --shape takes one of SHAPES, --precision one of step's precisions, others the default's type
SAMPLES, TOKENIZER = "../shared/data", "../shared/assets/t5-spiece.model"
DEVICE = ("auto", "cpu, cuda or cuda:N; auto: cuda when PyTorch sees a GPU")
COMMANDS = {
    "step": (t5.step, "prompt-tuning step time, ours vs transformers", {
        "shape": "t5-small", "batch": 8, "src": (256, "source tokens per example"), "prompt": (50, "soft prompt "
        "vectors"), "tgt": (3, "target tokens per example"), "precision": ("fp32", "fp32, bf16-autocast (fp32 "
        "weights under bf16 autocast) or bf16 (bf16 weights)"), "dropout": (0.1, "dropout rate of every variant "
        "(default: T5's 0.1, as the recipe trains; 0 measures the matrix work alone)"), "repeats": 5,
        "only": (None, argparse.SUPPRESS), "device": DEVICE}),
    "memory": (t5.memory, "peak memory of each variant's training step",
               {"shape": "t5-small", "batch": 8, "src": 256, "device": DEVICE}),
    "parity": (t5.parity, "logit differences against transformers per config family",
               {"batch": 4, "src": 128, "tgt": 8, "device": DEVICE}),
    "data": (t5.data_speed, "data preparation and tokenisation speed, padding overhead", {
        "samples": (SAMPLES, "the dataset samples folder"), "tokenizer": TOKENIZER,
        "tasks": "mnli,snli,sst2,qnli,trec,mrpc,rte,cola,stsb,sst5,ag_news", "repeats": 3}),
    "eval": (t5.eval_speed, "evaluation speed: greedy generation and rank scoring",
             {"shape": "t5-small", "batch": 64, "src": 128, "prompt": 50, "repeats": 3, "device": DEVICE}),
    "epoch": (t5.epoch_speed, "one epoch over real samples: bucketed batches vs padding to 256", {
        "shape": "t5-small", "batch": 32, "samples": SAMPLES, "tokenizer": TOKENIZER, "tasks": "mnli,sst2",
        "new-tokens": (7, "decoding steps of both evaluations"),
        "repeats": (1, "training epochs per variant (the median is shown)"), "device": DEVICE}),
    "pack": (packs.pack_speed, "R runs packed into one training step against the same runs one after another", {
        "runs": (10, "R, the runs"),
        "batch": (None, "comma list of batch sizes; 32 runs 256 source tokens, smaller ones 100 (default: 2,8,16,32 "
                  "on a GPU, 2 on the CPU)", {"type": comma_list(int)}),
        "shape": (None, "comma list of shapes (default: t5-small,t5-base on a GPU, t5-small on the CPU)",
                  {"type": comma_list(choices=SHAPES)}),
        "precision": (["fp32", "bf16"], "comma list of fp32, bf16 (autocast, as training runs it; not timed on a "
                      "CPU that emulates it)", {"type": comma_list(choices=DTYPES)}),
        "prompt": (50, "prompt vectors"), "tgt": (4, "target tokens per example"),
        "steps": (3, "timed rounds (median) after one warm-up round"), "device": DEVICE}),
    "llama-step": (llama.llama_step, "prompt-tuning step of our Llama vs transformers + PEFT (CAUSAL_LM)", {
        "shape": ("llama3-small", "llama3-small (Llama 3's ratios: 4 layers, hidden 1024, 16 heads, 4 key/value heads, "
                  "intermediate 3584, vocab 32000, llama3 rope) or tiny", {"choices": LLAMA_SHAPES}),
        "vocab": (None, "vocabulary size (default: the shape's; Llama 3's is 128256)", {"type": int}),
        "batch": 4, "tokens": (128, "tokens per example"), "prompt": (100, "soft prompt vectors"),
        "precision": ("fp32", "fp32, bf16-autocast (fp32 weights under bf16 autocast) or bf16 (bf16 weights)"),
        "attention": (["sdpa", "eager"], "comma list of transformers' attn_implementation values to time (sdpa: "
                      "its default)", {"type": comma_list(choices=["sdpa", "eager"])}),
        "repeats": (5, "timed rounds (median) after one warm-up round"), "device": DEVICE}),
    "shared-prefix": (shared_prefix.shared_prefix_speed, "decoder-only training step and evaluation on a real chat "
                      "model: the shared prefix, without it, and transformers + PEFT", {
        "model": ("HuggingFaceTB/SmolLM2-135M-Instruct", "a decoder-only model folder, or a name found in --models-dir "
                  "or the Hugging Face cache; nothing is downloaded"),
        "models-dir": ("models", "where tpv.py keeps downloaded models"),
        "samples": (SAMPLES, "the dataset samples folder (its sst2/)"),
        "batch": (4, "training rows (the LLM recipe's)"), "prompt": (100, "soft prompt vectors (the LLM recipe's)"),
        "rows": (64, "evaluation examples at once (evaluation's batch)"),
        "loss": (["full", "answer"], "comma list of --loss values to time", {"type": comma_list(
            choices=["full", "answer"])}),
        "repeats": (3, "timed rounds (median) after one warm-up round"), "device": DEVICE}),
    "load": (llama.load_memory, "peak resident memory of load_llama in a fresh process: one file, and shards", {
        "size-gb": (3.0, "the random checkpoint's size in bf16, GB (2^30 bytes)"),
        "max-shard-gb": (1.0, "the shards' largest size, GB"),
        "dtype": (["bf16", "fp32"], "comma list of loaded dtypes", {"type": comma_list(choices=DTYPES)}),
        "dir": (None, "where to write the checkpoint (default: the temp folder); deleted at the end"),
        "measure": (None, argparse.SUPPRESS)}),
    "estimate": (estimate.estimate, "device-hours of run.sh's grid here, from a few timed packed steps", {
        "model": ("t5-base", "a model folder, a name found in --models-dir or the Hugging Face cache (its "
                  "config.json), or a shape bench.py knows; nothing is downloaded"),
        "models-dir": ("models", "where tpv.py keeps downloaded models"),
        "plan": (None, "price this plan, ./run.sh --plan's output: a file, or - for stdin (default: run "
                 "./run.sh --plan with --model, --origins, --tasks and --shots)"),
        "origins": (None, "./run.sh --plan's --origins: 0-9, 0,3,5 or 0-2,7 (default: run.sh's, the family's "
                    "grid: T5 0-9, decoder-only 0-2)"),
        "tasks": (None, "./run.sh --plan's --tasks: a comma list of source tasks (default: run.sh's, the family's "
                  "grid: T5 v1's 6, decoder-only the LLM runs' 11)"),
        "shots": (None, "./run.sh --plan's --shots: few-shot training set sizes (default: run.sh's, the paper's)"),
        "transfer": (None, "only these few-shot groups of the plan, 'SOURCE,SOURCE:TARGET,...' separated by spaces "
                     "(default: all of the plan's; run.sh's are the paper's)", {"type": transfer_groups}),
        "pack": (None, "at most N runs per training step (default: the plan's --pack, else as many as fit, "
                 "the family's largest_pack)", {"type": int}),
        "precision": ("auto", "auto (bf16 on a GPU, fp32 on the CPU), fp32 or bf16", {"choices": ["auto", "fp32",
                                                                                                   "bf16"]}),
        "prompt": (None, "prompt vectors (default: the family's recipe, T5 50, decoder-only 100)", {"type": int}),
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
    p.set_defaults(run=lambda args: t5.everything(args, parser))
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
