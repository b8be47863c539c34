"""
tpv's command-line parser: every command's options, each checked where it enters (a number out of range, an
origin list that does not parse) so that a mistake is one line and exit status 2 before any work starts. The
recipe's numbers are not repeated here: training options default to None and train.recipe() fills them.
"""
import argparse
import math
import os
import sys

import data
import families
import prompts
import runs
from data import instruct
from support import devices, hub
from train import TrainConfig


def fail(message):
    """A user's mistake: one line on stderr, exit status 2, no traceback."""
    print(f"tpv: error: {message}", file=sys.stderr)
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        fail(f"{message} (see: python {self.prog.replace('tpv', 'tpv.py', 1)} --help)")


def at_least(low, convert=int, most=None, why=""):
    """An argparse type: a finite number >= low (and <= most, for the reason `why`), so that --batch-size 0 or --lr
    nan is a one-line error."""
    def parse(text):
        value = convert(text)  # a ValueError here becomes argparse's "invalid int value: 'x'"
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:,} ({why}), got {text}")
        return value
    parse.__name__ = convert.__name__  # argparse names the type in its message
    return parse


def seed(text):
    """numpy's and torch's generators take seeds in [0, 2**32) (data order) and below 2**63 (dropout)."""
    value = at_least(0)(text)
    if value >= 2 ** 32 - 1:
        raise argparse.ArgumentTypeError(f"must be below {2 ** 32 - 1}, got {text}")
    return value


def dropout_rate(text):
    value = float(text)
    if not 0 <= value < 1:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


# the paper's 0.3 is already large for prompt tuning; beyond 10 every run diverges
learning_rate = at_least(0, float, most=10, why="the paper uses 0.3")


def precision(text):
    """auto, bf16 or fp32; fp16 is gone (T5 overflows in it), and says so."""
    if text in devices.PRECISIONS:
        return text
    why = " (T5 overflows in fp16)" if text == "fp16" else ""
    raise argparse.ArgumentTypeError(f"{text} is not supported{why}: use bf16, the precision T5 was trained in, or "
                                     f"fp32 (auto: bf16 on CUDA, fp32 on the CPU)")


def lambda_value(text):
    """auto (None: sweep on validation) or a number in [0, 1]."""
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--lambda {text} is out of range: use auto or a number in [0, 1] (the paper "
                                         f"sweeps 0, 0.05, ..., 1)")
    return value


# at most what an origin holds (5,000 token ids), whatever --init: a bound that depended on the init would accept a
# length for one init and refuse it for another
prompt_length = at_least(0, most=prompts.ORIGIN_IDS, why="more than an origin holds; the paper uses 50, decoder-only "
                                                         "models 100")


def init_spec(text):
    """--init: text: must hold a text (an empty one would repeat the tokenizer's end-of-text embedding)."""
    if text.startswith("text:") and not text[5:].strip():
        raise argparse.ArgumentTypeError("text: holds no text; give the words to start from, e.g. "
                                         "--init 'text:Is this review positive or negative?'")
    return text


def origin_list(text):
    try:
        return runs.parse_origins(text)
    except runs.RunError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def common_options():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", default=os.environ.get("TPV_MODELS", "models"),
                        help="where downloaded models live (default: models, or $TPV_MODELS)")
    common.add_argument("--offline", action="store_true", default=hub.offline(),
                        help="never download (also TPV_OFFLINE=1)")
    return common


def run_options():
    """Options of every command that works with runs: which model, origin and files, and how to evaluate."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", type=runs.model_name, default=TrainConfig.model,
                   help=f"a model folder or a hub name (default: {TrainConfig.model})")
    p.add_argument("--origin", type=int, choices=range(prompts.N_ORIGINS), metavar="0..9",
                   help=f"which of the paper's 10 origins (default {TrainConfig.origin})")
    p.add_argument("--prompt-len", type=prompt_length,
                   help=f"soft prompt vectors (default {TrainConfig.prompt_len}; decoder-only models 100; "
                        f"train --shots 0 --prompt-len 0: the model without a prompt, a baseline)")
    p.add_argument("--precision", type=precision, default=TrainConfig.precision, metavar="{auto,fp32,bf16}",
                   help="auto: bf16 on CUDA (bf16 weights), fp32 on the CPU")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--scoring", choices=["generate", "rank"], default="generate",
                   help="greedy generation (the paper) or ranking the label words by log-probability")
    p.add_argument("--out", default="runs", help="where runs live (default: runs)")
    p.add_argument("--data-dir", default=data.data_dir(), help="the data cache (default: data_cache, or $TPV_DATA)")
    p.add_argument("--force", action="store_true", help="replace what a finished run or an earlier call wrote")
    return p


def add_main_commands(sub, common, run):
    """train, eval and add: the first commands of --help."""
    p = sub.add_parser("train", parents=[common, run], help="tune a soft prompt on a task (a comma list: multi-task)")
    p.add_argument("task", help="a task, or a comma list for the multi-task SPoT baseline: mnli,qnli")
    p.add_argument("--origins", type=origin_list, help="train one prompt per origin, packed: 0-9 or a comma list")
    p.add_argument("--init", action="append", type=init_spec, help="origin (default), random, vocab, text:\"...\", "
                   "a prompt file, or task[+task...]: the origin plus those tasks' vectors; repeat it for several runs, "
                   "packed")
    p.add_argument("--pack", type=at_least(1), help="at most N runs share a step (default: as many as the memory "
                   "budget allows, README)")
    p.add_argument("--shots", type=at_least(0), help="few-shot: N stratified training examples (0: no training)")
    default = lambda name: f"(default: the paper's recipe, {name})"
    p.add_argument("--max-steps", type=at_least(1), help=default("epochs x batches; few-shot 1000"))
    p.add_argument("--epochs", type=at_least(1), help=default("10, TREC 50; decoder-only 10, TREC 20"))
    p.add_argument("--batch-size", type=at_least(1), help=default("32, decoder-only 4; few-shot 2 / 8 / 16"))
    p.add_argument("--lr", type=learning_rate, help=default(TrainConfig.lr))
    p.add_argument("--weight-decay", type=at_least(0, float), help=default(TrainConfig.weight_decay))
    p.add_argument("--warmup", type=at_least(0), help=default(f"{TrainConfig.warmup}; decoder-only 3 %% of the steps"))
    p.add_argument("--eval-every", type=at_least(1), help=default(f"{TrainConfig.eval_every}; decoder-only a tenth "
                                                                  f"of the steps"))
    p.add_argument("--log-every", type=at_least(1), help=f"(default {TrainConfig.log_every})")
    p.add_argument("--seed", type=seed, help=default(TrainConfig.seed))
    p.add_argument("--dropout", type=dropout_rate, help="override the model's dropout_rate (default: as config.json, "
                   "0.1 for T5)")
    p.add_argument("--name", help="the run's file name when the command makes one run (default: from task, shots "
                   "and init)")
    p.add_argument("--resume", action="store_true", help="continue from the run's (or the pack's) checkpoint")
    p.add_argument("--checkpointing", action="store_true", help="decoder-only models: recompute each layer in the "
                   "backward pass instead of keeping its activations (batch 4 x 512 tokens of an 8B model on 40 GB)")
    p.add_argument("--loss", choices=instruct.LOSSES, help="decoder-only models: the loss over the whole chat "
                   "text (default, as the official runs) or over the answer and its end-of-turn token only")

    p = sub.add_parser("eval", parents=[common, run], help="evaluate a prompt on a task's split")
    p.add_argument("task")
    p.add_argument("--prompt", required=True, action="append", help="a prompt file, or a run name under --out (e.g. "
                   "mnli); repeat it to evaluate several prompts together")
    p.add_argument("--split", choices=["train", "validation", "test"], default="test")
    p.add_argument("--max-new-tokens", type=at_least(1), help="generation length (default: the longest label + 4; "
                   "the paper: 128)")

    p = sub.add_parser("add", parents=[common, run],
                       help="add task prompt vectors: origin + lambda * (sum of vectors)")
    p.add_argument("tasks", nargs="+")
    p.add_argument("--lambda", dest="lam", type=lambda_value, default=None,
                   help="auto (default: sweep 0..1 on validation) or a number in [0, 1]")


def add_experiment_commands(sub, common, run):
    for name, tasks, help_text in (("cross-origin", "+", "origin_i + vector_j for every pair of origins"),
                                   ("similarity", "*", "cosine similarity of task prompts and vectors"),
                                   ("report", None, "write results/README.md from the runs")):
        p = sub.add_parser(name, parents=[common, run], help=help_text)
        if tasks:
            p.add_argument("tasks", nargs=tasks)
            p.add_argument("--origins", type=origin_list, help="0-9 or a comma list (default: every trained origin)")
        p.add_argument("--results", default="results")
    p = sub.add_parser("import", parents=[common, run],
                       help="an official .bin prompt or a PEFT adapter -> a prompt file")
    p.add_argument("file")
    p.add_argument("--task", required=True, help="the run name to write (runs/<model>/origin_<i>/<task>.safetensors)")
    p = sub.add_parser("export", parents=[common, run], help="a prompt file -> a PEFT prompt-tuning adapter")
    p.add_argument("file", help="a prompt file or a run name")
    p.add_argument("--peft", required=True, help="the adapter folder to write")


def add_setup_commands(sub, common):
    p = sub.add_parser("download", parents=[common], help="fetch a T5 model from the Hugging Face hub")
    p.add_argument("name", help="t5-small, t5-base, t5-large, google/t5-v1_1-base, google/flan-t5-base, org/name")
    data_options = argparse.ArgumentParser(add_help=False)
    data_options.add_argument("--data-dir", default=data.data_dir(), help="the data cache (default: data_cache, or "
                              "$TPV_DATA)")
    data_options.add_argument("--skip-bad-rows", action="store_true",
                              help="skip malformed rows (reported with counts) instead of stopping at the first")
    data_options.add_argument("--model", type=runs.model_name, default=TrainConfig.model,
                              help="whose tokenizer measures the inputs")
    data_options.add_argument("--force", action="store_true", help="replace a prepared cache")
    p = sub.add_parser("download-data", parents=[common, data_options],
                       help="fetch a task's original distribution, check it, and prepare it")
    p.add_argument("task", help="a task name or 'all': " + ", ".join(data.TASKS))
    p = sub.add_parser("prepare", parents=[common, data_options],
                       help="build a task's data cache from its original files already on disk")
    p.add_argument("task", help=", ".join(data.TASKS))
    p.add_argument("--from", dest="source", required=True, help="folder holding the original distribution files")
    p = sub.add_parser("info", parents=[common], help="show a model's config and parameter counts")
    p.add_argument("--model", type=runs.model_name, default=TrainConfig.model, help="a model folder or a hub name")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--grid", action="store_true", help="for run.sh: only the model's family, its options and the "
                   "paper's grid for it, from config.json alone (nothing loaded, nothing downloaded)")
    p.add_argument("--family", choices=sorted(families.BY_NAME), help="--grid: the family of a hub name that is not "
                   "on this machine (default: T5); a config.json found says the family, and must agree")
    p = sub.add_parser("convert", help="write model.safetensors beside a folder's pytorch_model.bin")
    p.add_argument("dir")
    p.add_argument("--force", action="store_true", help="replace an existing model.safetensors")
    p = sub.add_parser("tiny-model", help="write a small random T5 or Llama (for smoke runs)")
    p.add_argument("dir")
    p.add_argument("--family", choices=sorted(families.BY_NAME), default=families.DEFAULT.FAMILY)
    p.add_argument("--spiece", help="T5: a sentencepiece vocabulary (spiece.model)")
    p.add_argument("--tokenizer", help="Llama: a byte-level BPE tokenizer.json (with tokenizer_config.json beside it, "
                                       "when there is one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace a model folder that is there")


def parse_args(argv=None, description=None):
    """The parsed command line; --origin defaults to 0 unless --origins says which origins."""
    args = build_parser(description).parse_args(argv)
    if hasattr(args, "origin"):
        if getattr(args, "origins", None) is not None and args.origin is not None:
            fail(f"--origin {args.origin} and --origins name the origins twice; give one of them")
        if args.origin is None:
            args.origin = TrainConfig.origin
    if getattr(args, "prompt_len", None) == 0 and (args.command != "train" or args.shots != 0 or args.init):
        fail("--prompt-len 0 is the model without a soft prompt, a baseline with nothing to train or start from: "
             "only train --shots 0 takes it, without --init")
    return args


def build_parser(description=None):
    parser = Parser(prog="tpv", description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    common, run = common_options(), run_options()
    add_main_commands(sub, common, run)
    add_experiment_commands(sub, common, run)
    add_setup_commands(sub, common)
    return parser
