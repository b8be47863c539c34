"""run.sh --mini (issue 19, item 5): the paper's experiments in miniature on a small decoder-only chat model on a
CPU (docs/real-model.md). Its grid (--plan), its bad inputs, the no-prompt baseline it adds (tpv.py train --shots 0
--prompt-len 0), the report's tables for what it adds, and the whole miniature end to end on a tiny random Llama
with dataset samples cut to a few rows (the real model's run is docs/real-model.md's, about 2 hours).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import cli
import experiments
import families
import prompts
import runs as runs_
import train
import tpv
from tests.test_llm_grid import LLAMA3, RUN_SH, SHARED, llama_config, option, plan_of, run_cli, t5_config

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_sh(*args):
    return subprocess.run(["bash", RUN_SH, *map(str, args)], capture_output=True, text=True, cwd=HERE,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=600)


def test_the_mini_grid_is_the_papers_experiments_cut_to_a_cpu(tmp_path):
    folder = llama_config(tmp_path / "llama")
    grid = plan_of("--mini", "--model", folder)
    assert {stage: len(commands) for stage, commands in grid.items()} == {
        "model": 1, "data": 3, "sources": 9, "sums": 1, "fewshot": 3, "analysis": 2, "report": 1}  # no multi-task
    assert [c[3] for c in grid["data"]] == ["sst2", "trec", "sst5"]
    assert all(option(c, "--from") == f"../shared/data/{c[3]}" and option(c, "--data-dir") == "runs/mini/data"
               for c in grid["data"])
    family = families.at(folder)
    runs = {}
    for command in grid["sources"] + grid["fewshot"]:
        args = cli.parse_args(command[2:])
        config = train.recipe(args.task, args.shots, family, **tpv.recipe_flags(args))
        name = args.name or f"{args.task} shots {args.shots} init {','.join(args.init or ['origin'])}"
        if config.prompt_len == 0:  # the model without a prompt: its run's own name
            name = runs_.run_name(args.task, args.shots, "origin", args.name, config.prompt_len)
        runs[name] = (args.origins or [args.origin], config.prompt_len, config.loss, config.lr, config.max_steps,
                      config.eval_every, args.scoring, args.out, args.data_dir)
    where = ("runs/mini", "runs/mini/data")
    assert runs == {
        "sst2 shots None init origin": ([0, 1, 2], 100, "answer", 0.01, 150, 25, "rank", *where),
        "trec shots None init origin": ([0, 1, 2], 100, "answer", 0.01, 150, 25, "rank", *where),
        "sst2 shots 0 init origin": ([0, 1, 2], 100, "answer", 0.01, None, 25, "rank", *where),  # untuned
        "trec shots 0 init origin": ([0, 1, 2], 100, "answer", 0.01, None, 25, "rank", *where),
        "sst2_no-prompt": ([0], 0, "answer", 0.3, None, None, "rank", *where),  # no prompt: nothing trained
        "trec_no-prompt": ([0], 0, "answer", 0.3, None, None, "rank", *where),
        "sst2_loss-full": ([2], 100, "full", 0.01, 150, 25, "rank", *where),  # the last of the three origins
        **{f"sst5 shots {n} init origin,sst2,sst2+trec": ([0], 100, "answer", 0.01, 50, 25, "rank", *where)
           for n in (0, 16, 64)}}
    assert [option(c, "--origin") for c in grid["sources"] if option(c, "--name") == "sst2_loss-full"] == list("012")
    assert grid["sums"] == [[*grid["sums"][0][:3], "sst2", "trec", "--origin", "0", *grid["sums"][0][7:]]]
    assert [(c[2], option(c, "--origins"), option(c, "--results")) for c in grid["analysis"]] == [
        ("cross-origin", "0,1,2", "results/mini"), ("similarity", "0,1,2", "results/mini")]
    # what the user gives wins; --out moves the data with the runs; the other loss of --loss full is answer
    grid = plan_of("--mini", "--model", folder, "--out", tmp_path / "o", "--loss", "full", "--origins", "1-2")
    other = [c for c in grid["sources"] if option(c, "--name") == "sst2_loss-answer"]
    assert [(option(c, "--origin"), option(c, "--loss")) for c in other] == [("1", "answer"), ("2", "answer")]
    assert option(grid["data"][0], "--data-dir") == str(tmp_path / "o" / "data")
    assert option(grid["sums"][0], "--origin") == "1" and option(grid["fewshot"][0], "--origins") == "1"


@pytest.mark.parametrize("args, message", [
    (["--model", "{t5}"], "run.sh: --mini trains a decoder-only chat model (default "
                          "HuggingFaceTB/SmolLM2-135M-Instruct), and {t5} is a T5 model (its config.json); give "
                          "--model a decoder-only one"),
    (["--model", "t5-base"], "and t5-base is a T5 model"),  # (a hub name not downloaded yet, or models/t5-base)
    (["--quick"], "run.sh: --quick and --mini are different grids: give one"),
    (["--estimate"], "run.sh: --mini is measured, not estimated: about"),
    (["--model", "{llama}", "--samples", "{missing}"], "run.sh: --mini prepares sst2 from {missing}/sst2, which is "
                                                        "not a folder (see --samples)"),
])
def test_a_mini_mistake_is_one_line_and_exit_2_with_nothing_written(tmp_path, args, message):
    where = {"t5": t5_config(tmp_path / "t5"), "llama": llama_config(tmp_path / "llama"),
             "missing": str(tmp_path / "no-samples")}
    out = tmp_path / "out"
    done = run_sh("--mini", *[a.format(**where) for a in args], "--out", out)
    assert (done.returncode, done.stdout, done.stderr.count("\n")) == (2, "", 1), done.stderr
    assert message.format(**where) in done.stderr
    assert not out.exists()


# -----------------------------------------------------------------------------
# the baseline the miniature adds: the model without a prompt, as a 0-vector prompt

@pytest.mark.parametrize("args", [
    ["train", "sst2"], ["train", "sst2", "--shots", "5"], ["train", "sst2", "--shots", "0", "--init", "trec"],
    ["eval", "sst2", "--prompt", "x"], ["add", "sst2", "trec"], ["import", "x.bin", "--task", "sst2"]])
def test_prompt_len_0_is_only_for_the_no_prompt_baseline(tmp_path, cli_in_process, args):
    done = run_cli(*args, "--prompt-len", "0", "--model", tmp_path / "never-looked-for", "--out", tmp_path)
    assert (done.returncode, done.stdout, done.stderr.count("\n")) == (2, "", 1), done.stderr
    assert "--prompt-len 0 is the model without a soft prompt, a baseline with nothing to train or start from: " \
           "only train --shots 0 takes it, without --init" in done.stderr
    assert os.listdir(tmp_path) == []  # refused before any model is looked for


def test_the_no_prompt_baseline_has_nothing_to_export(tmp_path, cli_in_process):
    path = str(tmp_path / "sst2_no-prompt.safetensors")
    prompts.save_prompt(path, torch.zeros(0, 8), torch.zeros(0, 8), {"model": "m", "family": "llama"})
    done = run_cli("export", path, "--peft", tmp_path / "adapter")
    assert (done.returncode, done.stderr.count("\n")) == (2, 1) and "holds no prompt vectors" in done.stderr
    assert not (tmp_path / "adapter").exists()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny random Llama (Llama 3's vocabulary) and T5, with RTE's sample cut to 24 rows prepared for each."""
    if not os.path.isfile(LLAMA3):
        pytest.skip(f"needs Llama 3's tokenizer.json and the dataset samples of {SHARED}")
    import data
    from tests.test_llama import trimmed_sample
    root = tmp_path_factory.mktemp("tiny_models")
    tpv.main(["tiny-model", str(root / "llama"), "--family", "llama", "--tokenizer", LLAMA3])
    tpv.main(["tiny-model", str(root / "t5"), "--spiece", os.path.join(SHARED, "assets", "t5-spiece.model")])
    raw = trimmed_sample("rte", str(root / "raw"), rows=24)
    for family in ("llama", "t5"):
        data.prepare(data.get_task("rte"), raw, str(root / family / "data"))
    return root


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_a_prompt_of_0_vectors_scores_and_predicts_as_the_model_alone(tiny_models, family):
    import data
    import evaluation
    args = cli.parse_args(["eval", "rte", "--prompt", "unused", "--model", str(tiny_models / family)])
    model, tokenizer = tpv.load_model(args)
    module = families.of(model)
    empty = torch.zeros(0, model.config.hidden_size if family == "llama" else model.config.d_model)
    ids = torch.randint(5, 250, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    candidates = [[11, 12], [13], [14, 15, 16]]
    with torch.no_grad():
        alone = module.score_candidates(model, ids, mask, None, candidates)  # (3, 3)
        assert alone.std() > 0 and torch.allclose(module.score_candidates(model, ids, mask, empty, candidates), alone,
                                                  atol=1e-6, rtol=0)
        assert torch.equal(module.generate_greedy(model, ids, mask, empty, max_new_tokens=4),
                           module.generate_greedy(model, ids, mask, None, max_new_tokens=4))
    task = data.get_task("rte")  # and the whole evaluation path, both scorings
    tokens = data.split_tokens(task, ["test"], tokenizer, str(tiny_models / family / "data"))["test"][0]
    for scoring in ("rank", "generate"):
        kw = {"scoring": scoring, "device": "cpu", "max_new_tokens": 3}
        assert (evaluation.predict(model, task, tokens, tokenizer, empty[None], **kw)
                == evaluation.predict(model, task, tokens, tokenizer, None, **kw))


# -----------------------------------------------------------------------------
# the report's tables for what the miniature adds

def record(path, **fields):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(fields, f)


def accuracy(value, task="sst2"):
    return {task: {"examples": 10, "invalid": 0, "accuracy": value, "exact_match": value, "f1": value}}


def test_the_report_shows_baselines_the_other_loss_and_the_lambda_sweep(tmp_path):
    runs = tmp_path / "runs" / "model"
    for o, (untuned, answer, full) in enumerate([(.50, .80, .70), (.52, .78, .60), (.54, .82, .65)]):
        record(runs / f"origin_{o}" / "sst2_0shots.json", test=accuracy(untuned))
        record(runs / f"origin_{o}" / "sst2.json", test=accuracy(answer), arguments={"loss": "answer"})
        record(runs / f"origin_{o}" / "sst2_loss-full.json", test=accuracy(full), arguments={"loss": "full"})
    record(runs / "origin_0" / "sst2_no-prompt.json", test=accuracy(.6))
    sweep = [{"lambda": lam, "sst2": lam, "trec": 1 - lam, "mean": .5} for lam in (0.0, 0.5, 1.0)]
    record(runs / "origin_0" / "sst2+trec.json", tasks=["sst2", "trec"], **{"lambda": 0.5}, sweep=sweep,
           test={"sst2": .7, "trec": .2}, relative={"sst2": .9, "trec": .3})
    results = tmp_path / "results"
    text = open(experiments.write_report(str(tmp_path / "runs"), "model", str(results))).read()
    assert "| sst2 | 3 | 80.0 ± 1.6 | 93.8 | 95.9 |" in text  # T5-base's and LLaMA's numbers beside
    assert "the model without a prompt: 60.0" in text
    assert ("| origin | untuned origin | tuned, --loss answer | tuned, --loss full | tuned − untuned |" in text)
    assert "| origin_1 | 52.0 | 78.0 | 60.0 | +26.0 |" in text
    assert "| mean ± std | 52.0 ± 1.6 | 80.0 ± 1.6 | 65.0 ± 4.1 | 28.0 ± 1.6 |" in text
    assert "Few-shot" not in text  # the untuned baselines (0 shots of a source task) are no few-shot target
    svg = (results / "addition_sst2+trec.svg").read_text()  # one plot per pair, mean ± std over its origins
    assert "sst2+trec: validation score vs λ (chosen: 0.5)" in svg and svg.count("<polyline") == 3
    assert "![sst2+trec: validation score vs λ](addition_sst2+trec.svg)" in text


# -----------------------------------------------------------------------------
# the whole miniature, on a tiny random Llama

def cut_samples(target, rows=40):
    """The first rows of every file of the samples of SST-2, TREC and SST-5 (one example a line; TSV headers kept)."""
    for task in ("sst2", "trec", "sst5"):
        for folder, _, names in os.walk(os.path.join(SHARED, "data", task)):
            for name in names:
                with open(os.path.join(folder, name), encoding="utf-8", errors="surrogateescape") as f:
                    lines = f.readlines()[:rows + 1]
                path = os.path.join(target, os.path.relpath(folder, os.path.join(SHARED, "data")), name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
                    f.writelines(lines)
    return target


def test_the_miniature_runs_end_to_end_and_reports_every_part(tiny_models, tmp_path):
    samples, out, results = cut_samples(tmp_path / "samples"), tmp_path / "runs", tmp_path / "results"
    mini = ["--mini", "--model", tiny_models / "llama", "--samples", samples, "--out", out, "--results", results,
            "--shots", "0", "--origins", "0-1"]
    done = run_sh(*mini)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[2/13] " in done.stdout and "1 of 13 done, about " in done.stdout  # progress, and a rough ETA
    text = (results / "README.md").read_text()
    for part in ("## Single-task prompt tuning", "### sst2: baselines, per origin", "tuned, --loss full",
                 "### trec: baselines, per origin", "## Zero-shot addition", "## Cross-origin",
                 "## Cosine similarity", "## Few-shot transfer", "### sst5"):
        assert part in text, part
    assert (results / "addition_sst2+trec.svg").exists() and (results / "fewshot_sst5.svg").exists()
    again = run_sh(*mini)  # restartable: what finished is skipped (the analysis and the report run again)
    assert again.returncode == 0 and "[1/3] " in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
