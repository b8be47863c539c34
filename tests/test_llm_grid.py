"""run.sh's grid for a decoder-only model (issue 19, item 4): the family comes from tpv.py (`info --grid`: the
model's config.json, else --family), and with it the grid's defaults (the family's GRID: the paper's LLM runs),
the options it takes and, in every tpv.py train the grid runs, the recipe; --plan, --slurm and --estimate price and
run that grid. Most tests need only a config.json of a tiny Llama (nothing is loaded: the plan reads the family,
the estimate times random weights of the shape); the run end to end needs a tiny Llama with Llama 3's vocabulary
from ../shared/assets.
"""
import json
import os
import subprocess
import sys

import pytest

import families
import model_llama
import model_t5
from benchmarks.llama import LLAMA_SHAPES

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root, above tests/


def llama_config(folder):
    """A folder with only the config.json of a tiny Llama: enough for the family, the plan and the estimate."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "llama", **LLAMA_SHAPES["tiny"]}, f)
    return str(folder)


def run_cli(*args):
    """`python tpv.py ARGS` (the cli_in_process fixture runs it in this process instead)."""
    return subprocess.run([sys.executable, os.path.join(HERE, "tpv.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=HERE, timeout=300)


def grid_facts(out):
    """`tpv.py info --grid`'s lines as {key: value}."""
    return dict(line.split(" ", 1) for line in out.splitlines())


# -----------------------------------------------------------------------------
# tpv.py info --grid: the one question run.sh asks

def test_info_grid_reads_the_family_from_config_json_and_loads_nothing(tmp_path, cli_in_process):
    folder = llama_config(tmp_path / "tiny-llama")  # no weights, no tokenizer: only config.json is read
    done = run_cli("info", "--grid", "--model", folder)
    assert done.returncode == 0, done.stderr
    assert grid_facts(done.stdout) == {
        "family": "llama", "name": model_llama.NAME, "source": "config.json", "origins": "0-2",
        "tasks": ",".join(model_llama.GRID["tasks"]), "options": " ".join(model_llama.OPTIONS)}


@pytest.mark.parametrize("args, family, source", [
    (["--model", "meta-llama/Llama-3.1-8B-Instruct", "--family", "llama"], model_llama, "--family"),
    (["--model", "t5-base"], model_t5, "default"),  # a hub name not on this machine: the paper's family
    (["--model", "org/some-model", "--family", "t5"], model_t5, "--family"),
])
def test_info_grid_of_a_hub_name_not_here_is_its_family_option_or_t5(tmp_path, cli_in_process, args, family, source):
    done = run_cli("info", "--grid", "--models-dir", tmp_path, *args)
    assert done.returncode == 0, done.stderr
    facts = grid_facts(done.stdout)
    assert (facts["family"], facts["source"]) == (family.FAMILY, source)
    assert (facts["origins"], facts["tasks"]) == (family.GRID["origins"], ",".join(family.GRID["tasks"]))
    assert not os.listdir(tmp_path)  # nothing downloaded


@pytest.mark.parametrize("args, message", [
    (["--family", "t5"], "is a Llama (Llama 3, DeepSeek-LLM) model (its config.json), not --family t5"),
    (["--family", "gpt"], "argument --family: invalid choice: 'gpt'"),
])
def test_info_grid_refuses_a_family_the_config_contradicts_in_one_line(tmp_path, cli_in_process, args, message):
    done = run_cli("info", "--grid", "--model", llama_config(tmp_path / "m"), *args)
    assert (done.returncode, done.stdout, done.stderr.count("\n")) == (2, "", 1) and message in done.stderr


def test_every_familys_grid_is_origins_and_tasks_tpv_knows():
    import data
    import runs
    for module in families.BY_NAME.values():
        assert runs.parse_origins(module.GRID["origins"]) and set(module.GRID["tasks"]) <= set(data.TASKS)


# -----------------------------------------------------------------------------
# run.sh: the plan, Slurm's arrays, bad input and a run, for a decoder-only model

RUN_SH = os.path.join(HERE, "run.sh")
SHARED = os.path.join(os.path.dirname(HERE), "shared")
LLAMA3 = os.path.join(SHARED, "assets", "llama3-tokenizer.json")
PAIRS = {"mnli,qnli": ["scitail", "snli"], "dbpedia,trec": ["ag_news", "yahoo"],
         "sst2,yelp_polarity": ["imdb", "sst5"]}  # run.sh's few-shot groups (paper §6b)
SHOTS = ["0", "5", "10", "25", "50", "100", "250", "500", "750", "1000"]


def run_sh(*args, cwd=HERE):
    """./run.sh ARGS with this Python as $PYTHON (run.sh asks its tpv.py for the model's family)."""
    return subprocess.run(["bash", RUN_SH, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=300)


def plan_of(*args):
    """--plan's commands by stage, each as its words."""
    import shlex
    done = run_sh("--plan", *args)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    grid = {}
    for line in done.stdout.splitlines():
        stage, command = line.split(" ", 1)
        grid.setdefault(stage, []).append(shlex.split(command))
    return grid


def option(command, name):
    return command[command.index(name) + 1] if name in command else None


def test_run_sh_defaults_without_asking_are_t5s_grid_and_its_loss_values_tpvs():
    """Where run.sh does not ask tpv.py (no config.json to read, no --family, no --loss), its defaults are T5's
    GRID; and --loss takes what tpv.py train takes."""
    from data import instruct
    source = open(RUN_SH).read()
    line = next(line for line in source.splitlines() if line.startswith("GRID_ORIGINS="))
    assert line == f"GRID_ORIGINS={model_t5.GRID['origins']} GRID_TASKS={','.join(model_t5.GRID['tasks'])}"
    assert f"$LOSS =~ ^({'|'.join(instruct.LOSSES)})$" in source


def test_plan_of_a_llama_is_the_paper_llm_grid_with_the_llm_recipe(tmp_path):
    import cli
    import tpv
    import train
    folder = llama_config(tmp_path / "tiny-llama")
    grid = plan_of("--model", folder)
    tasks, origins = list(model_llama.GRID["tasks"]), "0,1,2"
    targets = [t for pair, ts in PAIRS.items() for t in ts]
    assert {stage: len(commands) for stage, commands in grid.items()} == {
        "model": 1, "data": len(tasks) + len(targets), "sources": len(tasks), "multitask": len(PAIRS),
        "sums": len(tasks) * (len(tasks) - 1) // 2 * 3, "fewshot": len(targets) * len(SHOTS), "analysis": 2,
        "report": 1}
    assert [c[3] for c in grid["sources"]] == tasks and [c[3] for c in grid["multitask"]] == list(PAIRS)
    assert {(c[3], c[4]) for c in grid["sums"]} == {(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1:]}
    assert [c[2] for c in grid["analysis"]] == ["cross-origin", "similarity"]
    assert all(option(c, "--origins") == origins for c in grid["analysis"])
    assert {(c[3], option(c, "--shots")) for c in grid["fewshot"]} == {(t, n) for t in targets for n in SHOTS}
    trains = grid["sources"] + grid["multitask"] + grid["fewshot"]
    family = families.at(folder)
    for command in trains:  # the recipe every train line gets from tpv.py: the family's, nothing of T5's
        args = cli.parse_args(command[2:])
        assert (args.model, args.origins, args.dropout) == (folder, [0, 1, 2], None)
        config = train.recipe(args.task, args.shots, family, **tpv.recipe_flags(args))
        assert (config.prompt_len, config.schedule, config.warmup_ratio, config.lr) == (100, "cosine", 0.03, 0.3)
        if not args.shots:  # source and multi-task runs: batch 4, 10 epochs (TREC 20), validation at every tenth
            epochs = 20 if args.task == "trec" else 10
            assert (config.batch_size, config.epochs, config.eval_every) == (4, epochs, None), args.task
    # the same grid for the hub name of the paper's Llama, before it is downloaded, with --family
    hub = plan_of("--model", "meta-llama/Llama-3.1-8B-Instruct", "--family", "llama")
    assert {stage: len(c) for stage, c in hub.items()} == {stage: len(c) for stage, c in grid.items()}
    assert option(hub["sources"][0], "--model") == "meta-llama/Llama-3.1-8B-Instruct"


def test_plan_passes_loss_to_every_train_line_only(tmp_path):
    grid = plan_of("--model", llama_config(tmp_path / "m"), "--origins", "0", "--tasks", "sst2,yelp_polarity",
                   "--shots", "5", "--loss", "answer")
    for stage, commands in grid.items():
        for command in commands:
            assert option(command, "--loss") == ("answer" if command[2] == "train" else None), command


def t5_config(folder):
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "t5", "vocab_size": 300, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2,
                   "num_heads": 4, "relative_attention_num_buckets": 32}, f)
    return str(folder)


FAMILY_MISTAKES = [
    (["--loss", "answer"], "run.sh: --loss is not an option of T5 models, and t5-base is one (a hub name not "
                           "downloaded yet is taken for one; --family names another family); drop it"),
    (["--loss", "answer", "--model", "{t5}"], "run.sh: --loss is not an option of T5 models, and {t5} is one (its "
                                               "config.json); drop it"),
    (["--quick", "--loss", "answer"], "tiny-t5 is one (--quick's own model); drop it"),
    (["--model", "{llama}", "--family", "t5"], "run.sh: {llama} is a Llama (Llama 3, DeepSeek-LLM) model (its "
                                                "config.json), not --family t5"),
    (["--family", "gpt"], "run.sh: argument --family: invalid choice: 'gpt' (choose from 'llama', 't5')"),
    (["--family", "Llama 3"], "--family must be a family's name, such as t5 or llama, got 'Llama 3'"),
    (["--model", "{llama}", "--loss", "sum"], "run.sh: --loss must be full or answer, got 'sum'"),
    (["--quick", "--family", "llama"], "run.sh: --family: --quick's own model is a tiny T5; for another family "
                                       "give --model"),
]


@pytest.mark.parametrize("args, message, mode", [(*case, [None, "--plan", "--slurm"][i % 3])  # checked before any
                                                 for i, case in enumerate(FAMILY_MISTAKES)])  # mode's own work
def test_a_family_mistake_is_one_line_and_exit_2_before_anything_runs(tmp_path, args, message, mode):
    where = {"t5": t5_config(tmp_path / "t5"), "llama": llama_config(tmp_path / "llama")}
    out = tmp_path / "out"
    done = run_sh(*[a.format(**where) for a in args], *([mode] if mode else []), "--out", out)
    assert (done.returncode, done.stdout, done.stderr.count("\n")) == (2, "", 1), done.stderr
    assert done.stderr.startswith("run.sh: ") and message.format(**where) in done.stderr
    assert not out.exists()  # nothing written, nothing run


def test_slurm_writes_the_llm_grid_as_array_jobs(tmp_path):
    folder, out = llama_config(tmp_path / "tiny-llama"), tmp_path / "runs"
    grid = plan_of("--model", folder, "--out", out, "--loss", "answer")
    done = run_sh("--slurm", "--model", folder, "--out", out, "--loss", "answer", "--time", "2-00:00:00")
    assert done.returncode == 0, done.stderr
    slurm = out / "slurm"
    for stage, commands in grid.items():
        lines = (slurm / f"{stage}.plan").read_text().splitlines()
        assert len(lines) == len(commands) == len((slurm / f"{stage}.done").read_text().splitlines())
        if stage not in ("model", "data"):  # those run in submit.sh, where it is started
            script = (slurm / f"{stage}.sh").read_text()
            assert f"#SBATCH --array=0-{len(commands) - 1}\n" in script and "#SBATCH --time=2-00:00:00" in script
            assert subprocess.run(["bash", "-n", slurm / f"{stage}.sh"]).returncode == 0
    assert (slurm / "sums.plan").read_text().count(" add ") == 55 * 3
    assert all("--loss answer" in line for line in (slurm / "sources.plan").read_text().splitlines())


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama with Llama 3's vocabulary, and a small sst2 cache written by hand (tpv's JSONL)."""
    if not os.path.isfile(LLAMA3):
        pytest.skip(f"needs Llama 3's tokenizer.json at {LLAMA3}")
    root = tmp_path_factory.mktemp("tiny llama")
    done = run_cli("tiny-model", root / "model", "--family", "llama", "--tokenizer", LLAMA3)
    assert done.returncode == 0, done.stderr
    rows = [("a gorgeous, witty film", 1), ("dull and lifeless", 0), ("a joy to watch", 1), ("painfully slow", 0)]
    (root / "data" / "sst2").mkdir(parents=True)
    for split in ("train", "validation"):
        (root / "data" / "sst2" / f"{split}.jsonl").write_text("".join(
            json.dumps({"sentence": text, "label": label, "idx": i}) + "\n" for i, (text, label) in enumerate(rows * 3)))
    return root


def test_a_plain_run_of_a_tiny_llama_grid_trains_with_the_llm_recipe_and_reports(tiny_llama, tmp_path):
    """The plain run end to end, shrunk to one source task on one origin (each tpv.py process starts in about 3 s
    here, so the two-task miniature, seven processes, takes a minute): --quick's steps, the Llama's recipe."""
    out, results = tmp_path / "runs", tmp_path / "results"
    done = run_sh("--quick", "--model", tiny_llama / "model", "--tasks", "sst2", "--origins", "0", "--loss", "answer",
                  "--out", out, "--results", results, "--data-dir", tiny_llama / "data", "--samples", tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads((out / "model" / "origin_0" / "sst2.json").read_text())
    assert {key: record["arguments"][key] for key in ("prompt_len", "schedule", "batch_size", "loss", "max_steps")} == {
        "prompt_len": 100, "schedule": "cosine", "batch_size": 4, "loss": "answer", "max_steps": 12}
    assert "## Single-task prompt tuning" in (results / "README.md").read_text()
    assert (out / "logs" / "failed.txt").read_text() == ""


# -----------------------------------------------------------------------------
# bench.py estimate: a decoder-only plan priced with the family's recipe, shape and lengths

def test_estimate_counts_the_llm_grid_with_the_llm_recipe(tmp_path):
    import math
    from benchmarks import estimate
    from test_bench import OneSecondSteps  # one second per training step, evaluation free: the steps come out
    lines = estimate.parse_plan(estimate.run_plan(["--model", llama_config(tmp_path / "m")]))
    costs = estimate.grid_costs(OneSecondSteps(), lines, lambda tasks, config, n_runs, line_pack: 1, model_llama)
    epochs = lambda task: 20 if task == "trec" else 10  # a multi-task run with TREC keeps 10
    steps = lambda tasks: epochs(tasks) * math.ceil(sum(estimate.TASK_SIZES[t].train for t in tasks.split(",")) / 4)
    source = costs["source prompts"]  # batch 4, 10 epochs (TREC 20), one run a pack (largest_pack: 1), 3 origins
    assert (source.runs, source.packs, source.steps) == (33, 33, 3 * sum(map(steps, model_llama.GRID["tasks"])))
    multi = costs["multi-task SPoT"]
    assert (multi.runs, multi.packs, multi.steps) == (9, 9, 3 * sum(map(steps, PAIRS)))
    few = costs["few-shot"]  # 6 targets x 10 shot counts x 15 runs (3 origins x 5 inits); 9 counts train 1,000 steps
    assert (few.runs, few.packs, few.steps) == (6 * 10 * 15, 6 * 9 * 15, 6 * 9 * 15 * 1000)
    assert costs["zero-shot addition"].runs == 55 * 3 and costs["cross-origin"].runs == 11 * 9


def test_estimate_knows_the_papers_llm_shapes_without_a_download(tmp_path):
    from benchmarks import estimate
    family, cfg = estimate.model_config("meta-llama/Llama-3.1-8B-Instruct", str(tmp_path))
    assert family is model_llama and (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (4096, 32, 128256)
    family, cfg = estimate.model_config("deepseek-ai/deepseek-llm-7b-chat", str(tmp_path))
    assert family is model_llama and (cfg.num_hidden_layers, cfg.vocab_size) == (30, 102400)


def test_estimate_times_a_llama_and_prices_its_plan(tmp_path):
    """What ./run.sh --estimate runs (run.sh's plan into bench.py estimate --plan -), with fewer timed calls."""
    folder = llama_config(tmp_path / "m")
    plan = run_sh("--plan", "--quick", "--model", folder, "--origins", "0", "--loss", "answer")
    assert plan.returncode == 0, plan.stderr
    done = subprocess.run([sys.executable, "bench.py", "estimate", "--plan", "-", "--model", folder, "--steps", "1",
                           "--max-rows", "4", "--device", "cpu"], input=plan.stdout, capture_output=True, text=True,
                          cwd=HERE, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "a Llama (Llama 3, DeepSeek-LLM) model (hidden 64, 2 layers), fp32" in done.stdout
    assert "1 origins, source tasks sst2,cola,trec, shots 0,5; 100 prompt vectors, --loss answer;" in done.stdout
    assert "timed step: batch 4 x 1 runs, 64 source + 100 prompt" in done.stdout  # the Llama's batch of 4
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line[:1].isalpha()}
    assert rows["source"][2:5] == ["3", "36", "3"]  # 3 runs, 3 x 12 steps (--quick's), a pack each
    assert float(rows["total"][-1]) >= 0


def test_estimate_of_a_known_llm_name_prices_the_llm_grid_of_run_sh(tmp_path):
    """bench.py estimate --model NAME without --plan: run.sh's plan for the family the estimate prices (the name
    is not on this machine for run.sh to read)."""
    import argparse
    from benchmarks import estimate
    args = argparse.Namespace(plan=None, origins=None, tasks=None, shots="0", transfer=None,
                              model="meta-llama/Llama-3.1-8B-Instruct", models_dir=str(tmp_path))
    family, _ = estimate.model_config(args.model, args.models_dir)
    assert estimate.grid_words(estimate.plan_lines(args, family)) == (
        f"3 origins, source tasks {','.join(model_llama.GRID['tasks'])}, shots 0")
