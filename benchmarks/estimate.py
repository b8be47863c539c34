"""
What run.sh's grid costs on this device, in device-hours: the lines of `./run.sh --plan` (the one definition of the
grid), each priced from a few timed packed training steps, validation passes and greedy evaluations on random
weights of the model's shape, and the paper's dataset sizes. The model's family (T5, or a decoder-only Llama)
decides the random model, its batches (T5: source and target; Llama: the chat text, --loss full or answer), the
token lengths of each task and, through train.recipe, each line's recipe.

    python bench.py estimate --model t5-base           # the grid of ./run.sh --plan (run.sh's default options)
    python bench.py estimate --origins 0-2 --shots 0,5 # the options go to ./run.sh --plan
    ./run.sh --plan --quick | python bench.py estimate --plan - --model runs/tiny-t5
    ./run.sh --estimate                                # the same, from run.sh: it hands bench.py its plan
    ./run.sh --estimate --model meta-llama/Llama-3.1-8B-Instruct --family llama   # the LLM grid, Llama's shape

A `tpv.py train` line costs its runs (origins x inits) in packs of the memory estimate's size (the family's
largest_pack at the longest input; --pack caps it), its steps and validation passes from the family's recipe
(train.recipe with the line's --max-steps, --epochs, --batch-size and --eval-every), then each run's greedy test
evaluation; an `add` line its lambda sweep on validation and its tests; `cross-origin` every origin_i + tau_j on
test. The other lines (downloads, data, similarity, the report) cost next to nothing and are not priced. Runs no
model of the grid's, no data: nothing is downloaded.
"""
import argparse
import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import NamedTuple

import torch

from benchmarks import common
from benchmarks.common import (EMULATED_BF16, SHAPES, comma_list, data, device_words, families, hub, medians,
                               model_llama, model_t5, pick_device, random_batch, random_causal_batch, random_llama,
                               random_t5)
from benchmarks.llama import LLAMA3, LLAMA_8B
from benchmarks.packs import pack_of, packed_step


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
PAPER_HOURS = "about 1,200 A100-PCIe-40GB GPU-hours for all its experiments (supplement A)"


class Lengths(NamedTuple):
    source: float  # mean tokens before the answer: T5's source (truncated to 256), a decoder-only chat prefix
    target: float  # mean answer tokens: the label word and EOS, or the label word and the end of the turn
    longest: int  # the longest answer: the decoding steps of a greedy evaluation of a trained prompt


# Decoder-only lengths: measured once, by hand, with Llama 3's tokenizer (../shared/assets/llama3-tokenizer.json) in
# Llama-3.1-Instruct's chat format (support/chat.py, "llama3": the system header with its dates, the instruct text,
# "label: ", the assistant header; the answer with <|eot_id|>), each example cut to instruct.MAX_LENGTH as --loss full
# cuts it, over every row of the dataset samples (rows as in TASK_SIZES). DeepSeek-LLM's chat text is a little
# shorter (no system header).
CHAT_LENGTHS = {
    "mnli": Lengths(104.3, 3.32, 4), "qnli": Lengths(113.2, 4.00, 4), "sst2": Lengths(76.6, 2.00, 2),
    "yelp_polarity": Lengths(180.8, 2.00, 2), "dbpedia": Lengths(154.2, 2.00, 4), "trec": Lengths(77.2, 2.03, 4),
    "scitail": Lengths(96.8, 3.00, 4), "snli": Lengths(91.4, 3.34, 4), "ag_news": Lengths(117.3, 2.59, 4),
    "yahoo": Lengths(196.8, 2.10, 3), "imdb": Lengths(276.7, 2.00, 2), "sst5": Lengths(86.5, 2.29, 3),
    "qqp": Lengths(95.3, 2.61, 3), "mrpc": Lengths(116.7, 3.00, 3), "rte": Lengths(132.2, 4.00, 4),
    "cola": Lengths(66.2, 2.32, 3), "stsb": Lengths(217.3, 4.00, 4),
}
LLM_SHAPES = {  # the paper's decoder-only models by the last part of their hub names (config.json keys)
    "Llama-3.1-8B-Instruct": dict(**LLAMA3, **LLAMA_8B, num_hidden_layers=32),
    "Meta-Llama-3.1-8B-Instruct": dict(**LLAMA3, **LLAMA_8B, num_hidden_layers=32),
    "deepseek-llm-7b-chat": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
                                 num_attention_heads=32, num_key_value_heads=32, vocab_size=102400,
                                 rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=4096,
                                 tie_word_embeddings=False),
}


class Family(NamedTuple):
    """How the estimate builds and times a family: its config class, a random model (cfg, device, precision),
    a random batch (examples, source, target, vocab, device, loss), each task's token lengths, greedy decoding,
    the longest input a training example has, and the words that describe the model's shape."""
    config: type
    model: object
    batch: object
    lengths: dict
    generate: object
    longest_input: int
    words: object


FAMILIES = {  # families.py's FAMILY -> Family
    model_t5.FAMILY: Family(model_t5.T5Config, random_t5,
                            lambda n, source, target, vocab, device, loss: random_batch(n, source, target, vocab,
                                                                                         device),
                            {t: Lengths(s.source, s.target, s.longest) for t, s in TASK_SIZES.items()},
                            model_t5.generate_greedy, data.MAX_SOURCE,
                            lambda c: f"d_model {c.d_model}, {c.num_layers}+{c.num_decoder_layers} layers"),
    model_llama.FAMILY: Family(model_llama.LlamaConfig, random_llama, random_causal_batch, CHAT_LENGTHS,
                               model_llama.generate_greedy, data.instruct.MAX_LENGTH,
                               lambda c: f"hidden {c.hidden_size}, {c.num_hidden_layers} layers"),
}


class Timings:
    """Seconds of the grid's three kinds of work on this device, on random weights of the model's shape: a packed
    training step, a validation forward pass and a greedy evaluation. Each is timed at two source lengths (64 and
    256 tokens, + the prompt) and two target lengths (2 and 6), and interpolated bilinearly (extrapolated outside):
    the work is linear in each length and the cross-attention in their product; the encoder's self-attention,
    quadratic in the source, is about a tenth of its work at 306 tokens, so the straight line overestimates lengths
    in between by a few % at most. Each setting is timed once. Past max_rows rows (batch x pack), the time of one
    run of max_rows examples is scaled linearly (the same model work; a pack's AdamW, not timed then, is tiny)."""
    SOURCES, TARGETS = (64, 256), (2, 6)

    def __init__(self, cfg, precision, prompt_len, steps, max_rows, device, log=print, family=model_t5, loss="full"):
        self.module, self.family, self.loss = family, FAMILIES[family.FAMILY], loss  # loss: decoder-only --loss
        self.model, self.cfg, self.prompt_len = self.family.model(cfg, device, precision), cfg, prompt_len
        self.autocast = common.autocast_for(precision, device)
        self.steps, self.max_rows, self.device, self.log = steps, max_rows, device, log
        self.cache = {}
        # rows per inference forward, as evaluation.validation_losses and evaluation.predict take them; read once, so
        # that the memory the timings cache cannot change them (and with them the settings timed)
        self.validation_rows = family.inference_rows(self.model, device, prompt_len, validation=True)
        self.generation_rows = family.inference_rows(self.model, device, prompt_len)

    def step(self, batch, pack, source, target):
        return self.interpolated("step", batch, pack, source, target)

    def validation(self, source, target):
        """Per example and run: evaluation.validation_losses forwards validation_rows rows at a time, whatever the pack."""
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
        # generation: the input alone (T5's source, a decoder-only chat prefix), then `target` decoding steps
        examples = self.family.batch(batch, source, 0 if kind == "generation" else target, cfg.vocab_size,
                                     self.device, self.loss)
        inits = torch.randn(pack, self.prompt_len, model.width, device=self.device) * 0.5
        model.train(kind == "step")  # dropout in training steps only, as train.py and evaluation.py run them
        if kind == "step":
            trained = pack_of(inits)
            work = lambda: packed_step(model, trained, examples, autocast)
        elif kind == "validation":
            work = inference(lambda: self.module.run_losses(model, inits, examples).tolist(), autocast)
        else:  # random weights never emit EOS: every example decodes all `target` tokens
            work = inference(lambda: self.family.generate(model, examples["input_ids"], examples["attention_mask"],
                                                          inits[0], target).tolist(), autocast)
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


def mean_lengths(lengths, tasks, weights):
    """(source, target) token lengths (a family's Lengths by task) of a mixture of tasks, weighted by their
    examples."""
    total = sum(weights)
    return tuple(sum(w * getattr(lengths[t], f) for t, w in zip(tasks, weights)) / total for f in ("source", "target"))


def tests_s(times, lengths, tasks, prompts):
    """Greedy evaluation of `prompts` prompts on each task's test set."""
    return prompts * sum(TASK_SIZES[t].test * times.generation(lengths[t].source, lengths[t].longest) for t in tasks)


RUN_SH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "run.sh")
FLAGS = ("--resume", "--force", "--checkpointing")  # tpv.py's options in the plan's lines that take no value
ROWS = {"sources": "source prompts", "multitask": "multi-task SPoT", "sums": "zero-shot addition",
        "analysis": "cross-origin", "fewshot": "few-shot"}  # the plan's stages that cost: the table's rows, in order
PACKS = "the plan's --pack, else as many runs as fit (the family's largest_pack at the longest input)"  # no --pack
FREE = ("download", "tiny-model", "download-data", "prepare", "similarity", "report")  # next to nothing: not priced
RECIPE_OPTIONS = {"--max-steps": "max_steps", "--epochs": "epochs", "--batch-size": "batch_size",
                  "--eval-every": "eval_every"}  # tpv.py train's options that change the work (train.recipe's names)


class Line(NamedTuple):
    """A line of the plan: its stage, tpv.py's command, its positional arguments and {option: [its values]}."""
    stage: str
    command: str
    arguments: list
    options: dict
    text: str  # the line as the plan has it


def run_plan(options):
    """The text of ./run.sh --plan with these run.sh options (a list of words)."""
    env = {"PYTHON": sys.executable, **os.environ}  # run.sh asks this Python's tpv.py for the model's family
    out = subprocess.run(["bash", RUN_SH, "--plan", *options], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"bench.py estimate: ./run.sh --plan failed: {out.stderr.strip()}")
    return out.stdout


def parse_plan(text):
    """run.sh's plan, 'STAGE COMMAND' a line (the command shell-quoted, see ./run.sh --help) -> [Line]."""
    lines = []
    for text_line in filter(str.strip, text.splitlines()):
        stage, _, command = text_line.partition(" ")
        words = shlex.split(command)
        start = next((i for i, word in enumerate(words) if os.path.basename(word) == "tpv.py"), len(words) - 1) + 1
        arguments, options, rest = [], {}, iter(words[start + 1:])
        for word in rest:
            name, equals, value = word.partition("=")
            if not word.startswith("--"):
                arguments.append(word)
            else:  # --name VALUE, --name=VALUE or a flag
                options.setdefault(name, []).append(value if equals or name in FLAGS else next(rest, ""))
        lines.append(Line(stage, words[start] if start < len(words) else "", arguments, options, text_line))
    return lines


def plan_lines(args, family=model_t5):
    """The lines estimate prices: --plan FILE (-: stdin), else ./run.sh --plan with --model, its family (the one
    priced: a name known by its shape alone is not on this machine for run.sh to read), --origins, --tasks and
    --shots; only the few-shot groups of --transfer, when given."""
    grid = [(f"--{name}", getattr(args, name)) for name in ("origins", "tasks", "shots")]
    if args.plan:
        if any(value for _, value in grid):
            sys.exit("bench.py estimate: --origins, --tasks and --shots choose the grid of ./run.sh --plan; "
                     "with --plan, the plan says")
        with open(args.plan) if args.plan != "-" else open(sys.stdin.fileno(), closefd=False) as f:
            lines = parse_plan(f.read())
    else:
        lines = parse_plan(run_plan(["--model", args.model, "--family", family.FAMILY,
                                     *(word for option, value in grid if value for word in (option, value))]))
    return only_groups(lines, args.transfer) if args.transfer else lines


def only_groups(lines, groups):
    """The plan without the multi-task and few-shot lines of the few-shot groups that are not in `groups`
    ([(pair, targets)]); every group given must be in the plan."""
    def group_of(line):  # (pair, target) of a multi-task line (target None) or a few-shot line
        if line.stage == "multitask":
            return line.arguments[0], None
        return next((init for init in line.options.get("--init", []) if "," in init), None), line.arguments[0]
    chosen = {(",".join(pair), target) for pair, targets in groups for target in [None, *targets]}
    there = {group_of(line) for line in lines if line.stage in ("multitask", "fewshot")}
    missing = sorted(f"{pair}:{target}" if target else pair for pair, target in chosen - there)
    if missing:
        sys.exit(f"bench.py estimate: --transfer: the plan has no few-shot lines of {', '.join(missing)}")
    return [line for line in lines if line.stage not in ("multitask", "fewshot") or group_of(line) in chosen]


def origins_of(line):
    """The origins a line runs on: its --origins (a comma list of origins and ranges A-B), else one."""
    spans = [item.partition("-") for value in line.options.get("--origins", []) for item in value.split(",")]
    return sum(int(last or first) - int(first) + 1 for first, _, last in spans) or 1


def train_command(cost, times, line, pack_size, family):
    """A tpv.py train line: its runs (origins x inits) trained in packs (pack_size(tasks, config, runs, the line's
    --pack)): their steps with the family's recipe, their validation every validation_interval steps, then each
    run's test evaluation (shots 0: that alone)."""
    tasks, lengths = line.arguments[0].split(","), FAMILIES[family.FAMILY].lengths
    shots = int(line.options["--shots"][-1]) if "--shots" in line.options else None
    config = common.recipe(",".join(tasks), shots, family, **{key: int(line.options[option][-1])
                                                               for option, key in RECIPE_OPTIONS.items()
                                                               if option in line.options})
    n_runs = origins_of(line) * max(1, len(line.options.get("--init", [])))
    pack = pack_size(tasks, config, n_runs, int(line.options["--pack"][-1]) if "--pack" in line.options else None)
    sizes = [TASK_SIZES[t] for t in tasks]
    if shots != 0:
        source, target = mean_lengths(lengths, tasks, [s.train for s in sizes])
        steps = config.max_steps or config.epochs * math.ceil(sum(s.train for s in sizes) / config.batch_size)
        chunks = [min(pack, n_runs - i) for i in range(0, n_runs, pack)]
        cost.steps += steps * len(chunks)
        cost.packs += len(chunks)
        cost.train_s += steps * sum(times.step(config.batch_size, n, source, target) for n in chunks)
        # train.due: every validation_interval steps (T5: 100; decoder-only: a tenth of the run) and the last
        validations = math.ceil(steps / common.validation_interval(config, steps))
        cost.eval_s += validations * n_runs * sum(min(s.validation, config.validation_limit or s.validation)
                                                * times.validation(lengths[t].source, lengths[t].target)
                                                for t, s in zip(tasks, sizes))
    cost.runs += n_runs
    cost.eval_s += tests_s(times, lengths, tasks, n_runs)


def add_command(cost, times, line, pack_size, family):
    """A tpv.py add line (one origin): the lambda sweep on validation, then the sum and each single prompt on test."""
    lengths = FAMILIES[family.FAMILY].lengths
    cost.runs += 1
    cost.eval_s += tests_s(times, lengths, line.arguments, 2) + len(common.LAMBDAS) * sum(
        TASK_SIZES[t].validation * times.generation(lengths[t].source, lengths[t].longest) for t in line.arguments)


def cross_origin_command(cost, times, line, pack_size, family):
    """A tpv.py cross-origin line: origin_i + tau_j of every task for every pair of origins, on test."""
    prompts = origins_of(line) ** 2
    cost.runs += prompts * len(line.arguments)
    cost.eval_s += tests_s(times, FAMILIES[family.FAMILY].lengths, line.arguments, prompts)


PRICES = {"train": train_command, "add": add_command, "cross-origin": cross_origin_command}


def grid_costs(times, lines, pack_size, family=model_t5):
    """{experiment: Cost} of the plan's lines for a model of `family` (its module), a row per stage that costs
    (ROWS), each line priced by PRICES."""
    costs = {name: Cost() for name in ROWS.values()}
    for line in lines:
        if line.command in FREE:
            continue
        if line.command not in PRICES or line.stage not in ROWS:
            sys.exit(f"bench.py estimate: no price for this line of the plan: {line.text}")
        unknown = [t for argument in line.arguments for t in argument.split(",") if t not in TASK_SIZES]
        if unknown:
            sys.exit(f"bench.py estimate: no dataset sizes of {unknown[0]} (TASK_SIZES): {line.text}")
        PRICES[line.command](costs[ROWS[line.stage]], times, line, pack_size, family)
    return costs


def grid_words(lines):
    """'N origins, source tasks A,B, shots 0,5': the grid that the plan's lines train."""
    trains = [line for line in lines if line.command == "train"]
    tasks = [line.arguments[0] for line in trains if line.stage == "sources"]
    shots = list(dict.fromkeys(line.options["--shots"][-1] for line in trains if "--shots" in line.options))
    return (f"{max(map(origins_of, trains), default=0)} origins, source tasks {','.join(tasks) or 'none'}, shots "
            f"{','.join(shots) or 'none (no few-shot group)'}")


def estimate(args):
    """The device-hours of run.sh's grid (the lines of its plan) on this device, from timed steps."""
    device = pick_device(args.device)
    precision = common.resolve_precision(args.precision, device)
    if precision == "bf16" and common.bf16_is_emulated(device):
        sys.exit(f"bench.py estimate: {EMULATED_BF16}; estimate --precision fp32")
    family, cfg = model_config(args.model, args.models_dir)
    lines = plan_lines(args, family)
    max_rows = args.max_rows or (16 if device.type == "cpu" else math.inf)
    prompt = args.prompt or common.recipe("mnli", None, family).prompt_len  # the family's, the same for every task
    losses = {line.options.get("--loss", ["full"])[-1] for line in lines if line.command == "train"}
    if len(losses) > 1:
        sys.exit(f"bench.py estimate: the plan trains with --loss {' and '.join(sorted(losses))}; price one at a time")
    loss = min(losses, default="full")
    where = {None: "./run.sh --plan", "-": "the plan on stdin"}.get(args.plan, args.plan)
    print(f"estimating run.sh's grid ({len(lines)} lines of {where}) for {args.model}, a {family.NAME} model "
          f"({FAMILIES[family.FAMILY].words(cfg)}), {precision}, {device_words(device)}: {grid_words(lines)}; "
          f"{prompt} prompt vectors{f', --loss {loss}' if 'loss' in family.OPTIONS else ''}; packs of "
          f"{args.pack or PACKS}; greedy evaluation")
    times = Timings(cfg, precision, prompt, args.steps, max_rows, device, family=family, loss=loss)

    def pack_size(tasks, config, n_runs, line_pack):
        if args.pack or line_pack:
            return min(args.pack or line_pack, n_runs)
        longest = max(times.family.lengths[t].longest for t in tasks)
        return min(n_runs, common.largest_pack(cfg, config.batch_size, times.family.longest_input + prompt, longest,
                                               precision, device, family))
    print_costs(grid_costs(times, lines, pack_size, family), device)


def print_costs(costs, device):
    """The table of estimate: a row per experiment, then the total."""
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


def transfer_groups(text):
    """argparse type of --transfer: 'a,b:t1,t2 c,d:t3' -> [([a, b], [t1, t2]), ([c, d], [t3])], known tasks only."""
    groups = []
    for group in text.split():
        pair, _, targets = group.partition(":")
        groups.append((comma_list(choices=TASK_SIZES)(pair), comma_list(choices=TASK_SIZES)(targets)))
        if len(groups[-1][0]) != 2:
            raise argparse.ArgumentTypeError(f"{group!r}: a group is two source tasks, ':' and its targets")
    return groups


def model_config(name, models_dir):
    """(family module, config) of --model without its weights: config.json of a local folder (a path,
    models_dir/NAME or the Hugging Face cache, found as hub.py finds them; nothing is downloaded; its model_type
    names the family), else the shape of a known name (SHAPES: T5; LLM_SHAPES: the paper's decoder-only models)."""
    folder = hub.find_local(name, models_dir, lambda f: os.path.exists(os.path.join(f, "config.json")))
    if folder and os.path.isfile(os.path.join(folder, "config.json")):
        try:
            family = families.at(folder)
        except common.weights.CheckpointError as e:
            sys.exit(f"bench.py estimate: {e}")
        return family, FAMILIES[family.FAMILY].config.from_json(os.path.join(folder, "config.json"))
    base = name.rstrip("/").rsplit("/", 1)[-1]
    if base in LLM_SHAPES:
        return model_llama, model_llama.LlamaConfig(**LLM_SHAPES[base])
    if base not in SHAPES:
        sys.exit(f"bench.py estimate: {name}: no config.json there nor in the Hugging Face cache, and not one of "
                 f"the shapes bench.py knows ({', '.join([*SHAPES, *LLM_SHAPES])})")
    return model_t5, model_t5.T5Config(**SHAPES[base])
