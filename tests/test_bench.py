"""
Tests of bench.py and benchmarks/: the packing benchmark and the grid estimate, on the tiny shape with one or two
timed steps: the tables print, the two arms of `pack` do the same work through train.packed_loss, `estimate` prices
the lines of ./run.sh --plan (the grid that run.sh runs), and bf16 on a CPU that emulates it is reported, not
timed. Then the Llama benchmarks: `llama-step` times ours and transformers + PEFT only when they compute the same
loss, `load` writes random checkpoints (one file or shards) and reports the peak memory of loading each in a fresh
process.
"""
import json
import os
import re
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch

import bench
from benchmarks import common, estimate, llama, packs
from support import weights
import model_llama
import model_t5
import train

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root, above tests/
CPU = torch.device("cpu")


def test_pack_prints_rates_and_their_ratio(capsys):
    """bench.py pack, in this process (its table is the point): a row per batch, at its source length."""
    bench.main(["pack", "--shape", "tiny", "--runs", "3", "--batch", "2,32", "--precision", "fp32", "--steps", "1",
                "--device", "cpu"])
    out = capsys.readouterr().out
    rows = re.findall(r"^tiny +fp32 +(\d+) +(\d+) +3 +(\d+) +([\d.e+]+) +([\d.e+]+) +([\d.]+)x ", out, re.M)
    assert [(batch, source) for batch, source, *_ in rows] == [("2", "100"), ("32", "256")], out
    for _, _, pack, alone, packed, ratio in rows:
        assert int(pack) == 3  # the tiny shape's three runs fit any memory
        assert float(ratio) == pytest.approx(float(packed) / float(alone), rel=0.01)  # 4 digits, ratio 3


def test_packed_steps_compute_what_the_runs_compute_one_at_a_time(monkeypatch):
    """R runs in one pack and the same R runs one after another: the same losses at every step (so the same
    gradients, clipping and AdamW updates), each arm through the family's run_losses, one call per pack."""
    calls = []
    run_losses = model_t5.run_losses
    monkeypatch.setattr(model_t5, "run_losses", lambda model, prompts, batch: calls.append(len(prompts))
                        or run_losses(model, prompts, batch))
    model = common.random_t5(model_t5.T5Config(**common.SHAPES["tiny"]), CPU)
    model_t5.set_dropout(model, 0.0)
    batch = common.random_batch(2, 7, 3, model.config.vocab_size, CPU)
    inits = torch.randn(3, 5, model.config.d_model, generator=torch.Generator().manual_seed(1)) * 0.5
    alone, packed = packs.arm(inits, 1), packs.arm(inits, 3)
    for _ in range(2):
        calls.clear()
        separate = packs.round_losses(model, alone, batch, nullcontext)
        assert calls == [1, 1, 1]
        together = packs.round_losses(model, packed, batch, nullcontext)
        assert calls == [1, 1, 1, 3]
        assert together == pytest.approx(separate, rel=1e-5)
    stacked = torch.cat([prompts.detach() for prompts, _ in alone])
    assert torch.allclose(packed[0][0].detach(), stacked, atol=1e-4)  # the same two updates (0.3 each) of every run


class OneSecondSteps:
    """Timings stand-in: one second per training step, evaluation free; the grid's step count comes out."""
    def step(self, batch, pack, source, target):
        return 1.0

    def validation(self, source, target):
        return 0.0

    def generation(self, source, longest):
        return 0.0


def test_estimate_counts_the_v1_grid_of_run_sh_plan():
    """The lines of ./run.sh --plan with its defaults (the v1 grid) priced: the counts the grid had when
    bench.py kept a copy of it."""
    lines = estimate.parse_plan(estimate.run_plan([]))
    costs = estimate.grid_costs(OneSecondSteps(), lines, lambda tasks, config, n_runs, line_pack: min(10, n_runs))
    source = costs["source prompts"]  # 10 epochs of batch 32 (TREC 50), one pack of the 10 origins per task
    steps = {"mnli": 12_241, "qnli": 3_242, "sst2": 2_074, "yelp_polarity": 17_469, "dbpedia": 17_469, "trec": 171}
    assert source.steps == sum(n * (50 if task == "trec" else 10) for task, n in steps.items())
    assert (source.runs, source.packs, source.train_s) == (60, 6, source.steps)
    multi = costs["multi-task SPoT"]
    assert (multi.runs, multi.packs) == (30, 3)
    assert multi.steps == 10 * (15_483 + 17_640 + 19_543)  # mnli+qnli, dbpedia+trec, sst2+yelp_polarity
    few = costs["few-shot"]  # 6 targets x 9 trained shot counts x 50 runs (10 origins x 5 inits) in packs of 10
    assert (few.runs, few.packs, few.steps) == (6 * 10 * 50, 6 * 9 * 5, 6 * 9 * 5 * 1000)
    assert costs["zero-shot addition"].runs == 15 * 10 and costs["cross-origin"].runs == 6 * 100


def test_estimate_prices_what_each_line_says(tmp_path):
    """A plan's line is priced as it stands: --max-steps and --eval-every (--quick's) change the steps, --pack the
    packs, every --init is a run; a line with spaces and quotes in its values parses as bash would run it."""
    lines = estimate.parse_plan(estimate.run_plan(["--quick", "--origins", "0-1", "--pack", "3",
                                                   "--out", str(tmp_path / "a b 'q'")]))
    assert {line.command for line in lines} >= {"tiny-model", "prepare", "train", "add", "cross-origin", "report"}
    assert all(line.options["--out"] == [str(tmp_path / "a b 'q'")] for line in lines if "--out" in line.options)
    costs = estimate.grid_costs(OneSecondSteps(), lines, lambda tasks, config, n_runs, line_pack: min(line_pack,
                                                                                                       n_runs))
    source, few = costs["source prompts"], costs["few-shot"]  # sst2, cola, trec: 2 origins each, 12 steps
    assert (source.runs, source.packs, source.steps) == (6, 3, 3 * 12)
    assert (few.runs, few.packs, few.steps) == (2 * 2 * 5, 4, 4 * 12)  # rte at 0 and 5 shots (trained): 10 runs in 3s
    assert costs["zero-shot addition"].runs == 3 * 2 and costs["cross-origin"].runs == 3 * 4


def test_estimate_keeps_the_transfer_groups_asked_for_and_refuses_others(tmp_path):
    lines = estimate.parse_plan(estimate.run_plan([]))
    kept = estimate.only_groups(lines, estimate.transfer_groups("dbpedia,trec:yahoo"))
    assert [line.arguments[0] for line in kept if line.stage == "multitask"] == ["dbpedia,trec"]
    assert {line.arguments[0] for line in kept if line.stage == "fewshot"} == {"yahoo"}
    assert len(kept) == len(lines) - 2 - 5 * 10  # two pairs' multi-task lines, five targets x 10 shot counts
    with pytest.raises(SystemExit, match="the plan has no few-shot lines of sst2,cola, sst2,cola:rte"):
        estimate.only_groups(lines, estimate.transfer_groups("sst2,cola:rte"))


def test_estimate_reads_a_plan_from_stdin_like_run_sh_estimate(tmp_path):
    """./run.sh --plan | bench.py estimate --plan -: the plan's grid, not bench.py's --origins default."""
    (tmp_path / "config.json").write_text(json.dumps(model_t5.T5Config(**common.SHAPES["tiny"]).to_dict()))
    plan = estimate.run_plan(["--origins", "0", "--tasks", "sst2,cola", "--shots", "0"])
    out = subprocess.run([sys.executable, "bench.py", "estimate", "--plan", "-", "--model", str(tmp_path), "--steps",
                          "1", "--max-rows", "4", "--device", "cpu"], input=plan, capture_output=True, text=True,
                         cwd=HERE, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "lines of the plan on stdin) for" in out.stdout
    assert "1 origins, source tasks sst2,cola, shots none" in out.stdout
    assert re.search(r"^zero-shot addition +1 +0 +0 +- ", out.stdout, re.M), out.stdout


def test_estimate_prints_every_experiment_and_a_total(tmp_path, capsys):
    """On a model folder's config.json (tpv.py tiny-model writes such folders), a few timed tiny steps."""
    (tmp_path / "config.json").write_text(json.dumps(model_t5.T5Config(**common.SHAPES["tiny"]).to_dict()))
    bench.main(["estimate", "--model", str(tmp_path), "--origins", "0-1", "--shots", "0,5", "--steps", "1",
                "--max-rows", "4", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "lines of ./run.sh --plan) for" in out and "(d_model 32, 2+2 layers), fp32" in out
    assert "2 origins, source tasks mnli,qnli,sst2,yelp_polarity,dbpedia,trec, shots 0,5;" in out
    for name in ("source prompts", "multi-task SPoT", "zero-shot addition", "cross-origin", "few-shot"):
        assert re.search(rf"^{name} +[\d,]+ +[\d,]+ +[\d,]+ +([\d.]+|-) +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M), name
    assert re.search(r"^total +[\d.]+$", out, re.M) and "the paper: about 1,200 A100" in out


def test_bf16_on_a_cpu_that_emulates_it_is_reported_not_timed(monkeypatch, capsys):
    monkeypatch.setattr(common, "bf16_is_emulated", lambda device: True)
    bench.main(["pack", "--shape", "tiny", "--runs", "2", "--batch", "2", "--precision", "fp32,bf16", "--steps", "1",
                "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.startswith(common.EMULATED_BF16 + "\n")
    assert re.search(r"^tiny +fp32 ", out, re.M) and not re.search(r"^tiny +bf16 ", out, re.M)
    with pytest.raises(SystemExit, match="emulates it"):
        bench.main(["estimate", "--model", "tiny", "--precision", "bf16", "--device", "cpu"])


def llama_rows(out):
    """{variant: (s/step, ours is, loss diff, grad diff)} of llama-step's table."""
    rows = re.findall(r"^(ours|transformers \+ PEFT, \w+) +([\d.]+) +[\d,]+ +([\d.]+)x +(-|[\d.e+-]+) +(-|[\d.e+-]+)$",
                      out, re.M)
    return {name: tuple(float(x) if x != "-" else None for x in values) for name, *values in rows}


def test_llama_step_times_ours_and_peft_on_the_same_loss(capsys):
    bench.main(["llama-step", "--shape", "tiny", "--repeats", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    rows = llama_rows(out)
    assert list(rows) == ["ours", "transformers + PEFT, sdpa", "transformers + PEFT, eager"], out
    ours_s = rows["ours"][0]
    for name, (seconds, ratio, loss_diff, grad_diff) in rows.items():
        # the table prints seconds to 0.001 and the ratio to 0.01: the ratio of the printed times agrees up to that
        rounding = 0.005 + 0.0005 / ours_s * (1 + seconds / ours_s)
        assert abs(ratio - seconds / ours_s) <= rounding, out
        if name != "ours":  # the check that makes the times comparable: the same loss and prompt gradient
            assert loss_diff <= 1e-5 and grad_diff <= 1e-4, out
    assert "vocab 300, llama3 rope), batch 4, 100 prompt + 128 tokens, fp32" in out


def test_llama_step_refuses_to_time_different_work(monkeypatch):
    """Ours without Llama 3's rope scaling (a plausible bug): the prompt gradients differ (4e-4; the losses, near
    ln(vocab) at random weights, by 1e-7 only) and the check stops the benchmark before it times anything."""
    unscaled = model_llama.rope_frequencies
    monkeypatch.setattr(model_llama, "rope_frequencies", lambda cfg, device: unscaled(
        model_llama.LlamaConfig(**{**cfg.to_dict(), "rope_scaling": None}), device))
    with pytest.raises(SystemExit, match="another loss or gradient than ours, .*transformers \\+ PEFT, sdpa: loss"):
        bench.main(["llama-step", "--shape", "tiny", "--attention", "sdpa", "--repeats", "1", "--device", "cpu"])


def test_random_checkpoints_of_a_size_load_alike_from_one_file_and_from_shards(tmp_path):
    cfg = llama.llama_of_size(4 * 2 ** 20)
    size = 2 * sum(p.numel() for p in weights.build(model_llama.Llama, cfg).parameters())
    layer = 2 * sum(p.numel() for p in weights.build(model_llama.Llama, cfg).model.layers[0].parameters())
    assert abs(size - 4 * 2 ** 20) <= layer / 2  # the nearest number of layers
    loaded = {}
    for layout, max_shard in (("one", None), ("shards", 2 ** 19)):
        (tmp_path / layout).mkdir()
        torch.manual_seed(0)
        files = llama.write_random_llama(cfg, tmp_path / layout, max_shard)
        assert sum((tmp_path / layout / f).stat().st_size for f in files) > size  # the tensors and headers
        if max_shard:  # each shard within the limit (with its header), or one larger tensor alone
            index = json.loads((tmp_path / layout / "model.safetensors.index.json").read_text())["weight_map"]
            assert len(files) > 2 and sorted(set(index.values())) == files
            for f in files:
                tensors = sum(file == f for file in index.values())
                assert (tmp_path / layout / f).stat().st_size <= max_shard + 4096 or tensors == 1
        else:
            assert files == ["model.safetensors"]
        loaded[layout] = model_llama.load_llama(str(tmp_path / layout)).state_dict()
    assert list(loaded["one"]) == list(loaded["shards"])
    assert all(torch.equal(loaded["one"][k], loaded["shards"][k]) for k in loaded["one"])


def test_load_reports_peak_memory_of_both_layouts_and_dtypes(tmp_path, capsys):
    """bench.py load, in this process: each load it measures runs in a fresh process of its own."""
    bench.main(["load", "--size-gb", "0.01", "--max-shard-gb", "0.003", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    rows = re.findall(r"^(one file|shards of 0.003 GB) +(\d+) +(bf16|fp32) +([\d,]+) +([\d,]+) +([\d,]+) +([\d.]+)x "
                      r"+([\d.]+)x +[\d,]+ +[\d,]+ +[\d.]+$", out, re.M)
    assert [(layout, dtype) for layout, _, dtype, *_ in rows] == [
        ("one file", "bf16"), ("one file", "fp32"), ("shards of 0.003 GB", "bf16"), ("shards of 0.003 GB", "fp32")]
    number = lambda text: float(text.replace(",", ""))
    for layout, files, dtype, weights, baseline, peak, above, ratio in rows:
        assert (int(files) == 1) == (layout == "one file")
        assert number(weights) == pytest.approx(10 * (2 if dtype == "fp32" else 1), abs=1)
        assert number(peak) >= number(baseline) > 0 and float(ratio) > float(above) > 0
    assert os.listdir(tmp_path) == []  # the checkpoint is deleted
