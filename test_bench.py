"""
Tests of bench.py's packing benchmark and grid estimate, on the tiny shape with one or two timed steps: the
tables print, the two arms of `pack` do the same work through train.packed_loss, `estimate` counts the grid that
run.sh runs, and bf16 on a CPU that emulates it is reported, not timed.
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
import model_t5
import train

HERE = os.path.dirname(os.path.abspath(__file__))
CPU = torch.device("cpu")


def test_pack_prints_rates_and_their_ratio():
    out = subprocess.run([sys.executable, "bench.py", "pack", "--shape", "tiny", "--runs", "3", "--batch", "2,32",
                          "--precision", "fp32", "--steps", "1", "--device", "cpu"], capture_output=True, text=True,
                         cwd=HERE, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = re.findall(r"^tiny +fp32 +(\d+) +(\d+) +3 +(\d+) +([\d.e+]+) +([\d.e+]+) +([\d.]+)x ", out.stdout, re.M)
    assert [(batch, source) for batch, source, *_ in rows] == [("2", "100"), ("32", "256")], out.stdout
    for _, _, pack, alone, packed, ratio in rows:
        assert int(pack) == 3  # the tiny shape's three runs fit any memory
        assert float(ratio) == pytest.approx(float(packed) / float(alone), rel=0.01)  # 4 digits, ratio 3


def test_packed_steps_compute_what_the_runs_compute_one_at_a_time(monkeypatch):
    """R runs in one pack and the same R runs one after another: the same losses at every step (so the same
    gradients, clipping and AdamW updates), each arm through train.packed_loss, one call per pack."""
    calls = []
    packed_loss = train.packed_loss
    monkeypatch.setattr(train, "packed_loss", lambda model, prompts, batch: calls.append(len(prompts))
                        or packed_loss(model, prompts, batch))
    model = bench.random_t5(model_t5.T5Config(**bench.SHAPES["tiny"]), CPU)
    model_t5.set_dropout(model, 0.0)
    batch = bench.random_batch(2, 7, 3, model.config.vocab_size, CPU)
    inits = torch.randn(3, 5, model.config.d_model, generator=torch.Generator().manual_seed(1)) * 0.5
    alone, packed = bench.arm(inits, 1), bench.arm(inits, 3)
    for _ in range(2):
        calls.clear()
        separate = bench.round_losses(model, alone, batch, nullcontext)
        assert calls == [1, 1, 1]
        together = bench.round_losses(model, packed, batch, nullcontext)
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


def test_estimate_counts_the_v1_grid():
    transfer = bench.transfer_groups(bench.TRANSFER)
    costs = bench.grid_costs(OneSecondSteps(), 10, bench.SOURCE_TASKS.split(","), [0, 5, 10, 25, 50, 100, 250, 500,
                             750, 1000], transfer, lambda tasks, shots, n_runs: min(10, n_runs))
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


def test_estimate_prints_every_experiment_and_a_total(tmp_path, capsys):
    """On a model folder's config.json (tpv.py tiny-model writes such folders), a few timed tiny steps."""
    (tmp_path / "config.json").write_text(json.dumps(model_t5.T5Config(**bench.SHAPES["tiny"]).to_dict()))
    bench.main(["estimate", "--model", str(tmp_path), "--origins", "0-1", "--shots", "0,5", "--steps", "1",
                "--max-rows", "4", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "(d_model 32, 2+2 layers), fp32" in out
    for name in ("source prompts", "multi-task SPoT", "zero-shot addition", "cross-origin", "few-shot"):
        assert re.search(rf"^{name} +[\d,]+ +[\d,]+ +[\d,]+ +([\d.]+|-) +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M), name
    assert re.search(r"^total +[\d.]+$", out, re.M) and "the paper: about 1,200 A100" in out


def test_bf16_on_a_cpu_that_emulates_it_is_reported_not_timed(monkeypatch, capsys):
    monkeypatch.setattr(train, "bf16_is_emulated", lambda device: True)
    bench.main(["pack", "--shape", "tiny", "--runs", "2", "--batch", "2", "--precision", "fp32,bf16", "--steps", "1",
                "--device", "cpu"])
    out = capsys.readouterr().out
    assert out.startswith(bench.EMULATED_BF16 + "\n")
    assert re.search(r"^tiny +fp32 ", out, re.M) and not re.search(r"^tiny +bf16 ", out, re.M)
    with pytest.raises(SystemExit, match="emulates it"):
        bench.main(["estimate", "--model", "tiny", "--precision", "bf16", "--device", "cpu"])
