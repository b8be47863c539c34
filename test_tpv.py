"""
Tests for tpv. Run: python -m pytest -q test_tpv.py

Hugging Face `transformers` (a test-only dependency) is the numerical oracle: the tests build tiny random T5
checkpoints of each config family with `save_pretrained` and compare our model with `T5ForConditionalGeneration`.
Tests that read ../shared (the real dataset samples, the T5 vocabulary) skip when it is absent.
"""
import csv
from contextlib import nullcontext
import dataclasses
from collections import Counter
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

from support import hub
import model_t5
import tpv

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "shared")
SPIECE = os.path.join(SHARED, "assets", "t5-spiece.model")
needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared (dataset samples, T5 vocabulary) "
                                  "is not beside this checkout; it is in the project's CI")

# tiny versions of each config family the paper and users meet
FAMILIES = {
    "t5-v1.0": dict(feed_forward_proj="relu"),  # t5-base: relu, tied embeddings, d_model**-0.5 rescale
    "t5-v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,  # v1.1 / LM-adapted: untied
                    relative_attention_num_buckets=16, relative_attention_max_distance=20),
    "flan-t5-small-shape": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_heads=3, d_kv=8),
    "asymmetric-layers": dict(feed_forward_proj="relu", num_decoder_layers=3),
}
VOCAB = 300


def hf_config(family):
    from transformers import T5Config
    kw = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0)
    return T5Config(**{**kw, **FAMILIES[family]})


@pytest.fixture(scope="session")
def checkpoints(built_once):
    """family -> folder of a tiny random checkpoint written by transformers' save_pretrained (one copy for all test
    processes: the tests read them, or copy them to change them)."""
    def build(root):
        from transformers import T5ForConditionalGeneration
        for i, family in enumerate(FAMILIES):
            torch.manual_seed(i)
            hf = T5ForConditionalGeneration(hf_config(family))
            with torch.no_grad():  # random layer norm scales, so that a wrong norm cannot hide behind ones
                for name, p in hf.named_parameters():
                    if "layer_norm" in name:
                        p.uniform_(0.5, 1.5)
            hf.save_pretrained(root / family.replace(".", "_"))
    root = built_once("checkpoints", build)
    return {family: str(root / family.replace(".", "_")) for family in FAMILIES}


def load_hf(folder, dtype=torch.float32):
    from transformers import T5ForConditionalGeneration
    return T5ForConditionalGeneration.from_pretrained(folder, dtype=dtype).eval()


def batch(seed=0, B=3, S=40, T=5):
    """A batch with padding (row 1 is shorter) and long enough inputs to reach the log-spaced position buckets."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, S), generator=g)
    mask = torch.ones_like(ids)
    mask[1, S // 2:] = 0
    labels = torch.randint(3, VOCAB, (B, T), generator=g)
    labels[2, -2:] = -100  # ignored positions, as padding of the targets is marked in training
    return ids, mask, labels


def rel_diff(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


# -----------------------------------------------------------------------------
# the model against transformers

@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_keys_equal_hugging_face(checkpoints, family):
    ours, hf = model_t5.load_t5(checkpoints[family]), load_hf(checkpoints[family])
    assert list(ours.state_dict()) == list(hf.state_dict())
    for name, tensor in hf.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_hugging_face_fp32(checkpoints, family):
    ours, hf = model_t5.load_t5(checkpoints[family]), load_hf(checkpoints[family])
    ids, mask, labels = batch()
    dec = model_t5.shift_right(labels)
    expected = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert rel_diff(ours(ids, dec, mask), expected) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_hugging_face_bf16(checkpoints, family):
    ours = model_t5.load_t5(checkpoints[family], dtype=torch.bfloat16)
    hf = load_hf(checkpoints[family], torch.bfloat16)
    ids, mask, labels = batch()
    dec = model_t5.shift_right(labels)
    expected = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    got = ours(ids, dec, mask)
    assert got.dtype == torch.bfloat16
    assert rel_diff(got, expected) < 1e-2  # bf16 has 8 bits of mantissa: ~4e-3 per rounding


def test_bf16_weights_keep_the_embedding_table_in_fp32(checkpoints):
    """On CUDA a bf16 run loads the model in bf16 (devices.weights_dtype), but origins are rows of the input
    embedding: they stay the checkpoint's float32 values, so runs made on any device share them."""
    ours16, ours32 = (model_t5.load_t5(checkpoints["t5-v1.0"], dtype=d) for d in (torch.bfloat16, torch.float32))
    assert ours16.shared.weight.dtype == torch.float32 and ours16.lm_head.weight is ours16.shared.weight
    assert ours16.dtype == torch.bfloat16 and ours16.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.bfloat16
    ids = torch.arange(7) * 13
    assert torch.equal(prompts.embedding_rows(ours16, ids), prompts.embedding_rows(ours32, ids))
    assert devices.weights_dtype("bf16", torch.device("cuda")) == torch.bfloat16
    assert {devices.weights_dtype(p, torch.device(d)) for p, d in [("bf16", "cpu"), ("fp32", "cuda")]} == {torch.float32}


def test_bf16_weights_train_an_fp32_prompt_and_each_run_of_a_pack_is_its_own(checkpoints):
    """The CUDA default (bf16 weights, fp32 prompt), run here on the CPU: the prompt's gradient is fp32, and each
    run's loss and gradient in a pack equal its own alone within bf16's rounding (matrix shapes differ)."""
    model = model_t5.load_t5(checkpoints["t5-v1.0"], dtype=torch.bfloat16)  # eval mode: no dropout
    ids, mask, labels = batch()
    examples = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    prompts_ = torch.nn.Parameter(torch.randn(3, 5, 32))
    with torch.autocast("cpu", torch.bfloat16):
        losses = model_t5.run_losses(model, prompts_, examples)
    losses.sum().backward()
    assert losses.dtype == prompts_.grad.dtype == torch.float32 and torch.isfinite(prompts_.grad).all()
    for r in range(3):
        alone = torch.nn.Parameter(prompts_.detach()[r:r + 1].clone())
        with torch.autocast("cpu", torch.bfloat16):
            loss = model_t5.run_losses(model, alone, examples)
        loss.sum().backward()
        assert rel_diff(loss, losses[r:r + 1]) < 1e-2 and rel_diff(alone.grad[0], prompts_.grad[r]) < 5e-2


def test_inference_rows_by_device_and_memory(checkpoints, monkeypatch):
    """64 rows a forward on the CPU; on a GPU up to 1,024 as the memory budget allows, at least 1."""
    model = model_t5.load_t5(checkpoints["t5-v1.0"])
    assert model_t5.inference_rows(model, torch.device("cpu"), 50) == 64
    per_row = model_t5.inference_bytes(model.config, data.MAX_SOURCE + 50)
    for budget, rows in [(10 ** 15, 1024), (300 * per_row, 300), (per_row // 2, 1)]:
        monkeypatch.setattr(devices, "memory_budget", lambda device, budget=budget: budget)
        assert model_t5.inference_rows(model, torch.device("cuda"), 50) == rows
        assert model_t5.inference_rows(model, torch.device("cuda"), 50, validation=True) == rows


def test_validation_runs_without_autograd(checkpoints, monkeypatch):
    model = model_t5.load_t5(checkpoints["t5-v1.0"])
    tokens = {"source_offsets": np.arange(0, 11 * 3, 3)}  # 10 examples
    grad_enabled = []

    def fake_loss(model, prompts, batch):
        grad_enabled.append(torch.is_grad_enabled())
        return torch.zeros(prompts.shape[0])
    monkeypatch.setattr(model_t5, "run_losses", fake_loss)
    make_batch = lambda tokens, idx: {"labels": torch.ones(len(idx), 2)}
    prompts_ = torch.nn.Parameter(torch.randn(2, 5, 32))
    evaluation.validation_losses(model, tokens, prompts_, nullcontext, make_batch)
    assert grad_enabled and not any(grad_enabled)


def test_inference_halves_its_batches_where_the_gpu_runs_out_of_memory():
    """inference_rows is an estimate: a batch that runs out of memory is tried again at half the examples, and
    every example is seen once; one example that does not fit is an error."""
    tokens = {"source_offsets": np.arange(0, 101 * 3, 3)}  # 100 examples of 3 tokens
    seen = []

    def work(idx, fits=12):
        if len(idx) > fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        seen.append(len(idx))
    devices.in_inference_batches(data.lengths(tokens), 2, 64, work)
    assert seen[0] == 8 and sum(seen) == 100  # 64 rows // 2 runs = 32 -> 16 -> 8 examples
    with pytest.raises(torch.cuda.OutOfMemoryError):
        devices.in_inference_batches(data.lengths(tokens), 1, 64, lambda idx: work(idx, fits=0))


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_decoding_matches_hugging_face_generate(checkpoints, family):
    ours, hf = model_t5.load_t5(checkpoints[family]), load_hf(checkpoints[family])
    ids, mask, _ = batch(seed=1, B=4)
    # transformers 4.57's cache cannot hold more decoder than encoder layers, so that family decodes uncached there
    uncached = FAMILIES[family].get("num_decoder_layers") is not None
    expected = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, num_beams=1,
                           use_cache=not uncached)
    got = model_t5.generate_greedy(ours, ids, mask, max_new_tokens=12)
    assert got.tolist() == expected[:, 1:].tolist()  # HF's output starts with the decoder start token


@pytest.mark.parametrize("family", FAMILIES)
def test_soft_prompt_loss_and_gradient_match_hugging_face_inputs_embeds(checkpoints, family):
    ours, hf = model_t5.load_t5(checkpoints[family]), load_hf(checkpoints[family])
    ids, mask, labels = batch(seed=2)
    init = torch.randn(7, 32, generator=torch.Generator().manual_seed(3))
    # Hugging Face side: the prompt given as inputs_embeds, the mask extended with ones (what PEFT does)
    p_hf = init.clone().requires_grad_()
    embeds = torch.cat([p_hf.expand(3, -1, -1), hf.shared(ids)], dim=1)
    full_mask = torch.cat([torch.ones(3, 7, dtype=mask.dtype), mask], dim=1)
    loss_hf = hf(inputs_embeds=embeds, attention_mask=full_mask, labels=labels).loss
    loss_hf.backward()
    # ours
    p = init.clone().requires_grad_()
    logits = ours(ids, model_t5.shift_right(labels), mask, prompt=p)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    loss.backward()
    torch.testing.assert_close(loss, loss_hf, rtol=1e-4, atol=0)
    torch.testing.assert_close(p.grad, p_hf.grad, rtol=1e-4, atol=1e-7)
    assert p.grad.abs().sum() > 0


def test_prompt_per_example_equals_shared_prompt_and_checks_shape(checkpoints):
    ours = model_t5.load_t5(checkpoints["t5-v1.0"])
    ids, mask, labels = batch()
    dec = model_t5.shift_right(labels)
    prompt = torch.randn(5, 32)
    torch.testing.assert_close(ours(ids, dec, mask, prompt=prompt),
                               ours(ids, dec, mask, prompt=prompt.expand(3, -1, -1)))
    with pytest.raises(ValueError, match="prompt must be"):
        ours(ids, dec, mask, prompt=torch.randn(5, 31))


def test_dropout_rate_scale_gradient_and_seeding():
    x = torch.rand(1000, 1001) + 1  # 1,001,000 elements: not a multiple of 4 (one 64-bit draw feeds four)
    torch.manual_seed(7)
    y = model_t5.dropout(x, 0.1, True)
    dropped = y == 0
    # binomial(1,001,000, 0.1) has a standard deviation of 300: 1,500 is five of them
    assert abs(dropped.sum().item() - 0.1 * x.numel()) < 1500
    torch.testing.assert_close(y[~dropped], x[~dropped] * (65536 / (65536 - 6554)))  # 1 / keep probability
    assert abs(dropped[:, 0].float().mean().item() - 0.1) < 0.1 and abs(dropped[0].float().mean() - 0.1) < 0.1
    torch.manual_seed(7)
    torch.testing.assert_close(model_t5.dropout(x, 0.1, True), y, rtol=0, atol=0)  # the seed fixes the mask
    assert not torch.equal(model_t5.dropout(x, 0.1, True), y)  # and the generator moves on
    assert model_t5.dropout(x, 0.1, False) is x and model_t5.dropout(x, 0.0, True) is x
    assert model_t5.dropout(x.bfloat16(), 0.5, True).dtype == torch.bfloat16
    leaf = x.clone().requires_grad_()
    out = model_t5.dropout(leaf, 0.3, True)
    out.sum().backward()
    torch.testing.assert_close(leaf.grad, (out != 0).float() * (65536 / (65536 - 19661)))  # the same mask
    with pytest.raises(ValueError, match="dropout rate"):
        model_t5.set_dropout(model_t5.T5(model_t5.T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, num_layers=1)), 1.0)
    with pytest.raises(model_t5.CheckpointError, match="dropout_rate"):
        model_t5.T5Config(dropout_rate=-0.1)


@pytest.mark.parametrize("family", ["t5-v1.0", "flan-t5-small-shape"])
def test_scoring_packed_candidates_equals_scoring_each_alone(checkpoints, family):
    ours = model_t5.load_t5(checkpoints[family])
    ids, mask, _ = batch(seed=4)
    prompt = torch.randn(6, 32)
    candidates = [[10, 11, 1], [12, 1], [13, 14, 15, 16, 1]]
    packed = model_t5.score_candidates(ours, ids, mask, prompt, candidates)  # (B, C)
    assert packed.shape == (3, 3)
    for j, cand in enumerate(candidates):
        labels = torch.tensor(cand).expand(3, -1)
        logp = ours(ids, model_t5.shift_right(labels), mask, prompt=prompt).log_softmax(-1)
        alone = logp.gather(-1, labels[..., None])[..., 0].sum(-1)
        torch.testing.assert_close(packed[:, j], alone, rtol=1e-5, atol=1e-5)


def test_relative_position_buckets_match_known_values_and_hugging_face():
    enc = {-1: 1, -8: 8, -16: 10, -64: 14, -128: 15, 1: 17, 8: 24, 127: 31}
    dec = {-15: 15, -16: 16, -64: 26, -127: 31, -500: 31, 3: 0}
    for table, bidirectional in ((enc, True), (dec, False)):
        rel = torch.tensor(list(table))
        got = model_t5.relative_position_bucket(rel, bidirectional, 32, 128)
        assert got.tolist() == list(table.values())
    from transformers.models.t5.modeling_t5 import T5Attention
    rel = torch.arange(-300, 301)
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (16, 20)):
            assert torch.equal(model_t5.relative_position_bucket(rel, bidirectional, buckets, distance),
                               T5Attention._relative_position_bucket(rel, bidirectional, buckets, distance))


def test_config_derives_activation_like_hugging_face():
    assert model_t5.T5Config(feed_forward_proj="gated-gelu").dense_act_fn == "gelu_new"
    assert model_t5.T5Config(feed_forward_proj="gated-silu").is_gated_act
    assert model_t5.T5Config(num_layers=4).num_decoder_layers == 4
    with pytest.raises(model_t5.CheckpointError, match="gated-ACT"):
        model_t5.T5Config(feed_forward_proj="relu-gated")
    with pytest.raises(model_t5.CheckpointError, match="not supported"):
        model_t5.T5Config(feed_forward_proj="swish2")


# -----------------------------------------------------------------------------
# loading: formats and every kind of broken checkpoint

def copy_checkpoint(src, dst, edit=None, drop=()):
    """Copies a checkpoint folder, passing its tensors through edit(dict) first."""
    from safetensors.torch import load_file, save_file
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name not in ("model.safetensors",) + tuple(drop):
            with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
                g.write(f.read())
    tensors = load_file(os.path.join(src, "model.safetensors"))
    if edit:
        edit(tensors)
    if "model.safetensors" not in drop:
        save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_sharded_checkpoint_loads(checkpoints, tmp_path):
    hf = load_hf(checkpoints["t5-v1.1"])
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 1
    ours = model_t5.load_t5(str(tmp_path))
    ids, mask, labels = batch()
    dec = model_t5.shift_right(labels)
    assert rel_diff(ours(ids, dec, mask), hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits) < 1e-5
    os.remove(tmp_path / sorted(f for f in os.listdir(tmp_path) if f.startswith("model-"))[0])
    with pytest.raises(model_t5.CheckpointError, match="shards that are missing"):
        model_t5.load_t5(str(tmp_path))


def test_embedding_aliases_and_ignored_key_are_accepted(checkpoints, tmp_path):
    def rename(t):
        t["encoder.embed_tokens.weight"] = t.pop("shared.weight")  # stored under another tied name
        t["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(32, 4)
    folder = copy_checkpoint(checkpoints["t5-v1.0"], tmp_path / "alias", rename)
    ours = model_t5.load_t5(str(folder))
    assert torch.equal(ours.lm_head.weight, load_hf(checkpoints["t5-v1.0"]).shared.weight)
    assert ours.lm_head.weight.data_ptr() == ours.shared.weight.data_ptr()


def test_every_weight_problem_is_reported_together(checkpoints, tmp_path):
    def break_it(t):
        del t["encoder.block.1.layer.1.DenseReluDense.wo.weight"]  # missing
        t["encoder.block.9.extra.weight"] = torch.zeros(2)  # unexpected
        t["decoder.final_layer_norm.weight"] = torch.ones(31)  # wrong shape
        t["encoder.block.0.layer.0.SelfAttention.q.weight"][0, 0] = float("nan")  # non-finite
        t["decoder.embed_tokens.weight"] = t["shared.weight"] + 1  # tied copies that disagree
    folder = copy_checkpoint(checkpoints["t5-v1.0"], tmp_path / "broken", break_it)
    with pytest.raises(model_t5.CheckpointError) as e:
        model_t5.load_t5(str(folder))
    message = str(e.value)
    for part in ("1 missing: encoder.block.1.layer.1.DenseReluDense.wo.weight",
                 "1 unexpected: encoder.block.9.extra.weight",
                 "decoder.final_layer_norm.weight has shape (31,), config.json implies (32,)",
                 "encoder.block.0.layer.0.SelfAttention.q.weight holds NaN or infinite values",
                 "shared.weight differs from decoder.embed_tokens.weight"):
        assert part in message
    assert "\n" not in message


def test_untied_model_needs_its_lm_head(checkpoints, tmp_path):
    folder = copy_checkpoint(checkpoints["t5-v1.1"], tmp_path / "nohead", lambda t: t.pop("lm_head.weight"))
    with pytest.raises(model_t5.CheckpointError, match="1 missing: lm_head.weight"):
        model_t5.load_t5(str(folder))


def test_unreadable_files_and_folders(checkpoints, tmp_path):
    folder = copy_checkpoint(checkpoints["t5-v1.0"], tmp_path / "truncated")
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(model_t5.CheckpointError, match="unreadable safetensors file"):
        model_t5.load_t5(str(folder))
    with pytest.raises(model_t5.CheckpointError, match="no such model folder"):
        model_t5.load_t5(str(tmp_path / "absent"))
    no_config = copy_checkpoint(checkpoints["t5-v1.0"], tmp_path / "noconfig", drop=("config.json",))
    with pytest.raises(model_t5.CheckpointError, match="has no config.json"):
        model_t5.load_t5(str(no_config))
    other = copy_checkpoint(checkpoints["t5-v1.0"], tmp_path / "bart")
    (other / "config.json").write_text(json.dumps({"model_type": "bart"}))
    with pytest.raises(model_t5.CheckpointError, match="implements T5 only"):
        model_t5.load_t5(str(other))
    with pytest.raises(ValueError, match="float16"):
        model_t5.load_t5(checkpoints["t5-v1.0"], dtype=torch.float16)


def test_pickle_checkpoint_is_refused_then_converted(checkpoints, tmp_path):
    hf = load_hf(checkpoints["t5-v1.0"])
    hf.save_pretrained(tmp_path, safe_serialization=False)
    assert os.listdir(tmp_path) and not os.path.exists(tmp_path / "model.safetensors")
    with pytest.raises(model_t5.CheckpointError, match="pickle files can run arbitrary code") as e:
        model_t5.load_t5(str(tmp_path))
    assert f"python tpv.py convert {tmp_path}" in str(e.value)
    tpv.main(["convert", str(tmp_path)])
    ours = model_t5.load_t5(str(tmp_path))
    ids, mask, labels = batch()
    dec = model_t5.shift_right(labels)
    assert rel_diff(ours(ids, dec, mask), hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits) < 1e-5


# -----------------------------------------------------------------------------
# command line: user mistakes are one line and exit status 2

def run_cli(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(HERE, "tpv.py"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=HERE, timeout=300)


tpv_process = run_cli  # a real `python tpv.py`, also in a test where cli_in_process runs run_cli in this process


def test_cli_user_errors_are_one_line_and_exit_2(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    for args in (["info", "--model", str(broken)], ["info", "--model", str(tmp_path / "absent")],
                 ["info", "--model", "t5-base", "--offline", "--models-dir", str(tmp_path)],
                 ["info", "--dtype", "fp64"], ["nonsense"], ["convert", str(tmp_path)]):
        result = run_cli(*args, env={"HF_HOME": str(tmp_path / "hf")})
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("tpv: error: ") and result.stderr.count("\n") == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_cli_info_reports_config_counts_and_source(checkpoints, capsys):
    tpv.main(["info", "--model", checkpoints["t5-v1.1"]])
    out = capsys.readouterr().out
    n = sum(p.numel() for p in load_hf(checkpoints["t5-v1.1"]).parameters())
    assert f"parameters {n:,} in all" in out
    assert os.path.abspath(checkpoints["t5-v1.1"]) in out and "tie_word_embeddings=False" in out


# -----------------------------------------------------------------------------
# tokenizer

@needs_shared
def test_tokenizer_conventions():
    tok = model_t5.load_tokenizer(SPIECE)
    assert tok.encode("translate English to German: The house is wonderful.") == [
        13959, 1566, 12, 2968, 10, 37, 629, 19, 1627, 5, 1]  # assets/README.md
    assert tok.encode("") == [1]
    assert tok.encode("<extra_id_0>") == [32099, 1] and tok.encode("<extra_id_99>") == [32000, 1]
    assert tok.decode([0, 37, 629, 32099, 1]) == "The house"


def shared_texts():
    """Every text field of every dataset sample file under ../shared/data, read by format, with its origin."""
    texts = []
    for root, _, files in sorted(os.walk(os.path.join(SHARED, "data"))):
        for name in sorted(files):
            path = os.path.join(root, name)
            if name.lower().startswith("readme") or name == "MANIFEST.md":
                continue
            raw = open(path, "rb").read()
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")  # TREC and rotten tomatoes are latin-1
            if name.endswith(".csv"):
                fields = [f for row in csv.reader(io.StringIO(text)) for f in row]
            elif name.endswith(".jsonl") or "snli_format" in path:
                fields = [v for line in text.splitlines() if line.strip()
                          for v in json.loads(line).values() if isinstance(v, str)]
            elif "sst5" in path:  # PTB trees: the sentence is the leaves
                fields = [" ".join(re.findall(r"\(\d+ ([^()]+)\)", line)) for line in text.splitlines()]
            elif name.endswith(".label"):  # "LABEL:fine question text"
                fields = [line.split(" ", 1)[1] for line in text.splitlines() if " " in line]
            else:  # TSVs (GLUE, SciTail, MRPC), plain text files (IMDB reviews, rt-polarity lines, class lists)
                fields = [f for line in text.splitlines() for f in line.split("\t")]
            texts += [(f"{os.path.relpath(path, SHARED)}", f) for f in fields
                      if f.strip() and not re.fullmatch(r"[\d.\-]+", f.strip())]
    return texts


@needs_shared
@pytest.mark.parametrize("kind", ["T5Tokenizer", "T5TokenizerFast"])
def test_tokenizer_matches_hugging_face_on_every_shared_text(tmp_path, kind):
    import transformers
    (tmp_path / "spiece.model").write_bytes(open(SPIECE, "rb").read())
    hf = getattr(transformers, kind).from_pretrained(str(tmp_path), legacy=True)  # t5-base's tokenizer settings
    ours = model_t5.load_tokenizer(str(tmp_path))
    texts = shared_texts()
    assert len({origin for origin, _ in texts}) >= 40 and len(texts) > 5000
    mismatches = [(origin, text) for origin, text in texts if ours.encode(text) != hf(text).input_ids]
    assert not mismatches, mismatches[:3]


@needs_shared
def test_tokenizer_special_tokens_in_text_match_hugging_face(tmp_path):
    from transformers import T5Tokenizer
    (tmp_path / "spiece.model").write_bytes(open(SPIECE, "rb").read())
    hf = T5Tokenizer.from_pretrained(str(tmp_path), legacy=True)
    ours = model_t5.load_tokenizer(str(tmp_path))
    for text in ("Hello <extra_id_0> there", "Hello<extra_id_0>there", "a </s> b", "x <extra_id_99>.",
                 "<extra_id_5> <extra_id_4>", "<extra_id_100>", "tab\there", "café Ａ ①", "  "):
        assert ours.encode(text) == hf(text).input_ids, text
        assert ours.decode(ours.encode(text)) == hf.decode(hf(text).input_ids, skip_special_tokens=True), text


# -----------------------------------------------------------------------------
# download: a local hub on 127.0.0.1

class FakeHub(http.server.ThreadingHTTPServer):
    """Serves {url path: bytes} with Range support and the hub's sha256 ETag. Faults by file name: 'cut' sends
    half then closes (once), 'corrupt' sends other bytes than the ETag promises."""

    def __init__(self, files, token=None):
        self.files, self.faults, self.requests, self.token = files, {}, [], token  # token: a gated hub
        super().__init__(("127.0.0.1", 0), FakeHubHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add_repo(self, repo, files):
        self.files.update({f"/{repo}/resolve/main/{name}": data for name, data in files.items()})


class FakeHubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        if server.token and self.headers.get("Authorization") != f"Bearer {server.token}":
            self.send_error(401)
            return
        data_ = server.files.get(self.path)
        if data_ is None:
            self.send_error(404)
            return
        name = self.path.rsplit("/", 1)[-1]
        fault, body, start = server.faults.get(name), data_, 0
        if self.headers.get("Range"):
            start = int(re.match(r"bytes=(\d+)-", self.headers["Range"]).group(1))
            body = data_[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{hashlib.sha256(data_).hexdigest()}"')
        self.end_headers()
        if fault == "cut":
            server.faults.pop(name)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(bytes(len(body)) if fault == "corrupt" else body)


def checkpoint_files(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}


@pytest.fixture
def fake_hub(checkpoints, tmp_path, monkeypatch):
    files = {**checkpoint_files(checkpoints["t5-v1.0"]), "spiece.model": b"not a real vocabulary"}
    server = FakeHub({})
    server.add_repo("google-t5/t5-small", files)
    server.add_repo("someone/tiny", files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("TPV_OFFLINE", raising=False)
    yield server
    server.shutdown()


def test_download_fetches_a_model_that_loads(fake_hub, tmp_path, capsys):
    folder = hub.resolve_model("t5-small", str(tmp_path / "models"))  # legacy name -> google-t5/t5-small
    assert folder == str(tmp_path / "models" / "t5-small") and hub.is_complete(folder)
    assert model_t5.load_t5(folder).config.d_model == 32
    assert "MB/s" in capsys.readouterr().err
    before = len(fake_hub.requests)
    assert hub.resolve_model("t5-small", str(tmp_path / "models")) == folder
    assert len(fake_hub.requests) == before  # a complete copy is not fetched again


def test_download_resumes_after_a_cut_connection(fake_hub, tmp_path):
    fake_hub.faults["model.safetensors"] = "cut"
    models = str(tmp_path / "models")
    with pytest.raises(hub.DownloadError, match="run the same command again to resume"):
        hub.download_model("someone/tiny", models, quiet=True)
    part = os.path.join(models, "someone/tiny/model.safetensors.part")
    size = len(fake_hub.files["/someone/tiny/resolve/main/model.safetensors"])
    assert 0 < os.path.getsize(part) < size
    assert not os.path.exists(os.path.join(models, "someone/tiny/config.json"))  # no half-finished model
    hub.download_model("someone/tiny", models, quiet=True)
    assert ("/someone/tiny/resolve/main/model.safetensors", f"bytes={size // 2}-") in fake_hub.requests
    with open(os.path.join(models, "someone/tiny/model.safetensors"), "rb") as f:
        assert f.read() == fake_hub.files["/someone/tiny/resolve/main/model.safetensors"]
    assert not os.path.exists(part)


def test_download_rejects_corrupt_bytes_and_missing_models(fake_hub, tmp_path):
    fake_hub.faults["model.safetensors"] = "corrupt"
    models = str(tmp_path / "models")
    with pytest.raises(hub.DownloadError, match="sha256 mismatch"):
        hub.download_model("someone/tiny", models, quiet=True)
    assert not os.path.exists(os.path.join(models, "someone/tiny/model.safetensors"))
    assert not os.path.exists(os.path.join(models, "someone/tiny/model.safetensors.part"))
    with pytest.raises(hub.DownloadError, match="HTTP 404"):
        hub.download_model("nobody/nothing", models, quiet=True)


def test_download_sharded_model(fake_hub, checkpoints, tmp_path):
    load_hf(checkpoints["t5-v1.0"]).save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    fake_hub.add_repo("someone/sharded", {**checkpoint_files(tmp_path / "sharded"), "spiece.model": b"x"})
    folder = hub.download_model("someone/sharded", str(tmp_path / "models"), quiet=True)
    assert hub.is_complete(folder)
    model_t5.load_t5(folder)


def test_hugging_face_cache_is_used_without_downloading(fake_hub, checkpoints, tmp_path):
    snapshot = tmp_path / "hf" / "hub" / "models--google-t5--t5-small" / "snapshots" / "abc123"
    copy_checkpoint(checkpoints["t5-v1.0"], snapshot)
    (snapshot / "spiece.model").write_bytes(b"x")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    assert hub.resolve_model("t5-small", str(tmp_path / "models")) == str(snapshot)
    assert fake_hub.requests == []


def test_cli_download_and_offline(fake_hub, tmp_path):
    models = str(tmp_path / "models")
    result = run_cli("info", "--model", "someone/tiny", "--models-dir", models, env={"TPV_OFFLINE": "1"})
    assert result.returncode == 2 and "python tpv.py download someone/tiny" in result.stderr
    result = run_cli("download", "someone/tiny", "--models-dir", models)
    assert result.returncode == 0, result.stderr
    assert "ETA" in result.stderr and os.path.join(models, "someone/tiny") in result.stdout
    result = run_cli("info", "--model", "someone/tiny", "--models-dir", models, env={"TPV_OFFLINE": "1"})
    assert result.returncode == 0 and "parameters" in result.stdout


@needs_shared
def test_readme_python_example_runs(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration
    folder = tmp_path / "t5-base"  # a tiny stand-in with t5-base's vocabulary
    T5ForConditionalGeneration(T5Config(vocab_size=32128, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                                        decoder_start_token_id=0)).save_pretrained(folder)
    (folder / "spiece.model").write_bytes(open(SPIECE, "rb").read())
    readme = open(os.path.join(HERE, "README.md"), encoding="utf-8").read()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1).replace("models/t5-base", str(folder))
    result = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, cwd=HERE, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


# -----------------------------------------------------------------------------
# data: readers on the real samples, split rules, few-shot, tokens and batches, bad input

import numpy as np  # noqa: E402

import data  # noqa: E402

SAMPLE_FOLDER = {"yelp_polarity": "yelp_polarity", "dbpedia": "dbpedia", "yahoo": "yahoo_answers"}


def sample(task_name):
    return os.path.join(SHARED, "data", SAMPLE_FOLDER.get(task_name, task_name))


# split: (count, {label: count}) from MANIFEST.md, and the first example written out by hand from the raw file
READER_EXPECTATIONS = {
    "mnli": ({"train": (51, {0: 18, 1: 17, 2: 16}), "validation": (2, {1: 1, 2: 1})}, "train",
             "mnli premise: Conceptually cream skimming has two basic dimensions - product and geography. "
             "hypothesis: Product and geography are what make cream skimming work. ", "neutral"),
    "qnli": ({"validation": (300, {0: 147, 1: 153})}, "validation",
             "qnli question: What came into force after the new constitution was herald? sentence: As of that day, "
             "the new constitution heralding the Second Republic came into force.", "entailment"),
    "sst2": ({"train": (300, {0: 149, 1: 151}), "validation": (872, {0: 428, 1: 444})}, "train",
             "sst2 sentence: hide new secretions from the parental units ", "negative"),
    "yelp_polarity": ({"train": (2, {0: 1, 1: 1}), "test": (2, {0: 1, 1: 1})}, "train",
                      "yelp_polarity sentence: Unfortunately, the frustration of being Dr. Goldberg's patient is a "
                      "repeat of the experience", "negative"),
    "dbpedia": ({"train": (5, {0: 5}), "test": (5, {0: 5})}, "train",
                "dbpedia What is the category for following text: title: E. D. Abbott Ltd content:  Abbott of "
                "Farnham E D Abbott Limited was a British coachbuilding business based in Farnham Surrey trading "
                "under that name from 1929. A major part of their output was under sub-contract to motor vehicle "
                "manufacturers. Their business closed in 1972.", "Company"),
    "trec": ({"train": (5452, {0: 86, 1: 1250, 2: 1162, 3: 1223, 4: 835, 5: 896}),
              "test": (500, {0: 9, 1: 94, 2: 138, 3: 65, 4: 81, 5: 113})}, "train",
             "trec_coarse What is this question asking for: How did serfdom develop in and then leave Russia ?",
             "Description"),
    "scitail": ({"validation": (4, {0: 2, 1: 2})}, "validation",
                "scitail premise: An introduction to atoms and elements, compounds, atomic structure and bonding, "
                "the molecule and chemical reactions. hypothesis: Replace another in a molecule happens to atoms "
                "during a substitution reaction.", "neutral"),
    "snli": ({"validation": (296, {0: 96, 1: 97, 2: 103})}, "validation",
             "snli premise: Two women are embracing while holding to go packages. hypothesis: The sisters are "
             "hugging goodbye while holding to go packages after just eating lunch.", "neutral"),
    "ag_news": ({"test": (300, {0: 75, 1: 86, 2: 51, 3: 88})}, "test",
                "ag_news What is the category for following text: Fears for T N pension after talks Unions "
                "representing workers at Turner   Newall say they are 'disappointed' after talks with stricken parent "
                "firm Federal Mogul.", "Business"),
    "yahoo": ({"train": (5, {2: 1, 4: 1, 5: 1, 6: 2}), "test": (5, {1: 1, 2: 1, 3: 2, 8: 1})}, "train",
              "yahoo What is the category for following text: title: why doesn't an optical mouse work on a glass "
              "table? content: or even on some surfaces? answer: Optical mice use an LED", "Computers"),
    "imdb": ({"train": (12, {0: 6, 1: 6}), "test": (10, {0: 5, 1: 5})}, "train",
             "imdb sentence: Story of a man who has unnatural feelings for a pig. Starts out with a opening scene",
             "negative"),
    "sst5": ({"train": (300, {0: 1, 1: 16, 2: 42, 3: 154, 4: 87}),
              "validation": (1101, {0: 139, 1: 289, 2: 229, 3: 279, 4: 165}), "test": (300, None)}, "train",
             "sst5 sentence The Rock is destined to be the 21st Century 's new `` Conan '' and that he 's going to "
             "make a splash even greater than Arnold Schwarzenegger , Jean-Claud Van Damme or Steven Segal .",
             "positive"),
    "qqp": ({"train": (9, {0: 6, 1: 3}), "validation": (9, {0: 5, 1: 4})}, "train",
            "qqp question1: How is the life of a math student? Could you describe your own experiences? question2: "
            "Which level of prepration is enough for the exam jlpt5?", "not_duplicate"),
    "mrpc": ({"train": (91, None), "validation": (408, {0: 129, 1: 279})}, "train",
             'mrpc sentence1: Amrozi accused his brother , whom he called " the witness " , of deliberately '
             'distorting his evidence . sentence2: Referring to him as only " the witness " , Amrozi accused his '
             'brother of deliberately distorting his evidence .', "equivalent"),
    "rte": ({"train": (300, None), "validation": (277, {0: 146, 1: 131})}, "train",
            "rte sentence1: No Weapons of Mass Destruction Found in Iraq Yet. sentence2: Weapons of Mass "
            "Destruction Found in Iraq.", "not_entailment"),
    "cola": ({"train": (300, None), "validation": (1043, {0: 322, 1: 721})}, "train",
             "cola sentence: Our friends won't buy this analysis, let alone the next one we propose.", "acceptable"),
    "stsb": ({"train": (300, None), "validation": (1500, None)}, "train",
             "stsb sentence1: A plane is taking off. sentence2: An air plane is taking off.", "5.0"),
}


def test_every_task_has_reader_expectations():
    assert set(READER_EXPECTATIONS) == set(data.TASKS) and len(data.TASKS) == 17


@needs_shared
@pytest.mark.parametrize("name", list(READER_EXPECTATIONS))
def test_reader_on_real_samples(name):
    task = data.get_task(name)
    splits, skipped = data.read_task(task, sample(name))
    expected, first_split, source, target = READER_EXPECTATIONS[name]
    assert skipped == {} and set(splits) == set(expected)
    for split, (count, labels) in expected.items():
        assert len(splits[split]) == count, split
        if labels:
            assert dict(Counter(r[task.label_field] for r in splits[split])) == labels, split
    first = splits[first_split][0]
    assert task.source(first).startswith(source) and task.target(first) == target


@needs_shared
def test_reader_quirks():
    yahoo, _ = data.read_task(data.get_task("yahoo"), sample("yahoo"))
    assert "mouse.  \nSince glass" in yahoo["train"][0]["best_answer"]  # "\n" written as two characters
    yelp, _ = data.read_task(data.get_task("yelp_polarity"), sample("yelp_polarity"))
    assert "\\" not in "".join(r["text"] for r in yelp["train"] + yelp["test"])
    trec, _ = data.read_task(data.get_task("trec"), sample("trec"))
    assert any("sister city" in r["text"] for r in trec["train"])  # the one 0xF0 byte, made a space as HF does
    mrpc, _ = data.read_task(data.get_task("mrpc"), sample("mrpc"))
    assert mrpc["validation"][0]["sentence1"].startswith("He said the foodservice pie business")
    stsb, _ = data.read_task(data.get_task("stsb"), sample("stsb"))
    assert isinstance(stsb["validation"][0]["label"], float)


@needs_shared
def test_mrpc_from_senteval_files_follows_glue_rule(tmp_path):
    """GLUE builds MRPC from msr_paraphrase_train.txt and dev ids; applied to the sample it gives dev.tsv's rows."""
    for name in ("msr_paraphrase_train.txt", "dev_ids.tsv"):
        (tmp_path / name).write_bytes(open(os.path.join(sample("mrpc"), name), "rb").read())
    derived, _ = data.read_task(data.get_task("mrpc"), str(tmp_path))
    glue, _ = data.read_task(data.get_task("mrpc"), sample("mrpc"))
    key = lambda r: (r["sentence1"], r["sentence2"], r["label"])
    assert derived["validation"] and {key(r) for r in derived["validation"]} <= {key(r) for r in glue["validation"]}
    assert [key(r) for r in derived["train"][:91]] == [key(r) for r in glue["train"]]


@needs_shared
def test_imdb_reads_the_archive_like_the_folders(tmp_path):
    import tarfile
    with tarfile.open(tmp_path / "aclImdb_v1.tar.gz", "w:gz") as tar:
        tar.add(os.path.join(sample("imdb"), "aclImdb"), arcname="aclImdb")
    from_archive, _ = data.read_task(data.get_task("imdb"), str(tmp_path))
    from_folders, _ = data.read_task(data.get_task("imdb"), sample("imdb"))
    assert from_archive == from_folders


def synthetic_canonical(n_train=6000, n_heldout=800, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    make = lambda n: [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": int(rng.choice(classes, p=[.5, .3, .2]))}
                      for i in range(n)]
    return {"train": make(n_train), "validation": make(n_heldout)}


def test_large_split_rule_is_stratified_disjoint_and_deterministic():
    task = data.get_task("mnli")
    canonical = synthetic_canonical()
    splits = data.paper_splits(task, canonical)
    assert len(splits["validation"]) == 1000 and len(splits["train"]) == 5000
    assert splits["test"] == canonical["validation"]
    ids = lambda rows: {r["premise"] for r in rows}
    assert not ids(splits["train"]) & ids(splits["validation"])
    assert ids(splits["train"]) | ids(splits["validation"]) == ids(canonical["train"])
    share = lambda rows: np.bincount([r["label"] for r in rows], minlength=3) / len(rows)
    assert np.abs(share(splits["validation"]) - share(canonical["train"])).max() < 1e-3  # stratified
    assert data.paper_splits(task, canonical) == splits  # deterministic
    assert data.paper_splits(task, canonical, seed=1)["validation"] != splits["validation"]


def test_small_split_rule_halves_heldout_and_fixes_stsb():
    task = data.get_task("rte")
    canonical = {
        "train": [{"sentence1": f"a{i}", "sentence2": "b", "label": i % 2} for i in range(300)],
        "validation": [{"sentence1": f"v{i}", "sentence2": "b", "label": int(i % 3 == 0)} for i in range(277)]}
    splits = data.paper_splits(task, canonical)
    assert splits["train"] == canonical["train"]
    assert len(splits["validation"]) == 138 and len(splits["test"]) == 139
    v, t = {r["sentence1"] for r in splits["validation"]}, {r["sentence1"] for r in splits["test"]}
    assert not v & t and len(v | t) == 277
    stsb = data.get_task("stsb")  # the official code evaluated STS-B on its validation examples: here disjoint
    scores = {"train": [{"sentence1": "a", "sentence2": "b", "label": 1.0}] * 10,
              "validation": [{"sentence1": f"s{i}", "sentence2": "b", "label": (i % 26) / 5} for i in range(100)]}
    s = data.paper_splits(stsb, scores)
    assert not {r["sentence1"] for r in s["validation"]} & {r["sentence1"] for r in s["test"]}
    assert [stsb.target({"label": x}) for x in (4.75, 3.8, 0.0, 5.0, 2.49)] == ["4.8", "3.8", "0.0", "5.0", "2.4"]


def test_few_shot_is_stratified_seeded_and_the_same_every_time():
    task = data.get_task("mnli")
    train = data.paper_splits(task, synthetic_canonical())["train"]
    shots = data.few_shot(task, train, 100)
    assert len(shots) == 100 and shots == data.few_shot(task, train, 100)
    in_train = np.bincount([r["label"] for r in train]) / len(train)
    assert np.abs(np.bincount([r["label"] for r in shots]) - 100 * in_train).max() < 1  # proportional, rounded
    assert data.few_shot(task, train, 100, seed=7) != shots
    with pytest.raises(data.DataError, match="only"):
        data.few_shot(task, train[:10], 100)


def test_batches_cover_each_example_once_are_deterministic_and_resumable():
    rng = np.random.default_rng(0)
    lens = rng.integers(5, 256, size=1003)
    batches = data.epoch_batches(lens, 32, seed=42, epoch=3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1003))  # nothing lost, nothing twice
    assert sum(len(b) < 32 for b in batches) <= 1
    again = data.epoch_batches(lens, 32, seed=42, epoch=3)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # a resumed run sees the same batches
    other = data.epoch_batches(lens, 32, seed=42, epoch=4)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))
    real, ours, fixed = data.padding_stats(lens, batches)
    assert real <= ours < 1.1 * real and fixed == 1003 * 256  # sorting within chunks: padding stays small


@needs_shared
def test_tokens_collate_truncation_and_cache_invalidation(tmp_path):
    task = data.get_task("sst2")
    tok = model_t5.load_tokenizer(SPIECE)
    data.prepare(task, sample("sst2"), str(tmp_path))
    rows = data.read_cache(task, str(tmp_path))["validation"]
    tokens = data.encode(task, "validation", rows, tok, str(tmp_path))
    assert int(tokens["truncated"]) == 0
    first = tokens["source"][tokens["source_offsets"][0]:tokens["source_offsets"][1]].tolist()
    assert first == tok.encode(task.source(rows[0]))
    batch = data.collate(tokens, np.array([0, 1, 2]))
    n = int(batch["attention_mask"][0].sum())
    assert batch["input_ids"][0, :n].tolist() == first and batch["input_ids"][0, n:].eq(0).all()
    assert batch["labels"][0].tolist()[:2] == tok.encode(task.target(rows[0]))[:2]
    short = data.tokenize(task, rows[:5], tok, max_source=8)
    assert int(short["truncated"]) == 5 and np.diff(short["source_offsets"]).max() == 8
    assert short["source"][7] == 1  # EOS kept last
    cache_files = os.listdir(tmp_path / "sst2" / "tokens")
    other = tmp_path / "other.model"
    other.write_bytes(open(SPIECE, "rb").read() + b"\0")  # another tokenizer file -> another cache entry
    other_tok = model_t5.load_tokenizer(SPIECE)
    other_tok.model_file = str(other)
    data.encode(task, "validation", rows, other_tok, str(tmp_path))
    assert len(os.listdir(tmp_path / "sst2" / "tokens")) == len(cache_files) + 1


# bad input -------------------------------------------------------------------

def write(path, text, mode="w"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(text)


@pytest.mark.parametrize("content, message", [
    ("sentence\tlabel\ngood film \t1\nbad film \t7\n", "dev.tsv:3: unknown label (got '7')"),
    ("sentence\tlabel\ngood film \t1\n \t0\n", "dev.tsv:3: empty text in field 'sentence'"),
    ("sentence\tlabel\ngood film \t1\nno label here\n", "dev.tsv:3: wrong column count (expected 2, got 1)"),
    (b"sentence\tlabel\ngood film \t1\ncaf\xe9 \t0\n", "dev.tsv:3: undecodable bytes"),
])
def test_bad_rows_name_path_line_reason_and_text(tmp_path, content, message):
    write(tmp_path / "src" / "dev.tsv", content, "wb" if isinstance(content, bytes) else "w")
    with pytest.raises(data.DataError, match=re.escape(message)):
        data.prepare(data.get_task("sst2"), str(tmp_path / "src"), str(tmp_path / "cache"))
    assert not os.path.exists(tmp_path / "cache" / "sst2" / "validation.jsonl")  # nothing partial


def test_bad_rows_never_overwrite_a_good_cache_and_can_be_skipped(tmp_path):
    task = data.get_task("sst2")
    write(tmp_path / "good" / "dev.tsv", "sentence\tlabel\ngood film \t1\nbad film \t0\n")
    data.prepare(task, str(tmp_path / "good"), str(tmp_path / "cache"))
    before = open(tmp_path / "cache" / "sst2" / "validation.jsonl").read()
    write(tmp_path / "bad" / "dev.tsv", "sentence\tlabel\nfine \t1\nworse \t9\n \t1\nfine too \t0\n")
    with pytest.raises(data.DataError):
        data.prepare(task, str(tmp_path / "bad"), str(tmp_path / "cache"), force=True)
    assert open(tmp_path / "cache" / "sst2" / "validation.jsonl").read() == before
    assert not [f for f in os.listdir(tmp_path / "cache" / "sst2") if f.endswith(".tmp")]
    report = data.prepare(task, str(tmp_path / "bad"), str(tmp_path / "cache"), skip_bad_rows=True, force=True)
    assert "skipped rows: 1 unknown label, 1 empty text in field 'sentence'" in report
    assert len(data.read_cache(task, str(tmp_path / "cache"))["validation"]) == 2


def test_user_written_cache_is_checked(tmp_path):
    write(tmp_path / "mnli" / "train.jsonl", '{"premise": "a", "hypothesis": "b", "label": 0}\n'
                                             '{"premise": "a", "hypothesis": "b", "label": 3}\n')
    with pytest.raises(data.DataError, match=r"train.jsonl:2: label 3 is not one of mnli's labels"):
        data.read_cache(data.get_task("mnli"), str(tmp_path))
    with pytest.raises(data.DataError, match="python tpv.py download-data qnli"):
        data.read_cache(data.get_task("qnli"), str(tmp_path))
    with pytest.raises(data.DataError, match="unknown task"):
        data.get_task("mnly")


def test_malformed_csv_and_json_rows(tmp_path):
    write(tmp_path / "ag" / "test.csv", '"3","Title","Body"\n"2","only two"\n')
    with pytest.raises(data.DataError, match=r"test.csv:2: wrong column count \(expected 3, got 2\)"):
        data.read_task(data.get_task("ag_news"), str(tmp_path / "ag"))
    write(tmp_path / "snli" / "snli_1.0_dev.jsonl", '{"sentence1": "a", "sentence2": "b", "gold_label": "-"}\n'
                                                    '{"sentence1": "a", "sentence2": "b"\n')
    with pytest.raises(data.DataError, match="snli_1.0_dev.jsonl:2: not a JSON record"):
        data.read_task(data.get_task("snli"), str(tmp_path / "snli"))


# download-data: a local server on 127.0.0.1 serving archives built from the samples -------------------------

def zip_bytes(members):
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, path in members.items():
            z.write(path, name)
    return buffer.getvalue()


@pytest.fixture
def data_mirror(monkeypatch, tmp_path):
    server = FakeHub({})
    monkeypatch.setenv("TPV_DATA_MIRROR", server.url)
    yield server
    server.shutdown()


@needs_shared
def test_download_data_fetches_checks_extracts_and_prepares(data_mirror, monkeypatch, tmp_path):
    sst2 = {f"SST-2/{n}": os.path.join(sample("sst2"), n) for n in ("train.tsv", "dev.tsv")}
    data_mirror.files["/sst2/SST-2.zip"] = zip_bytes(sst2)
    # the sample's train.tsv is a prefix of the published file, so pin its own hash for this test
    monkeypatch.setitem(data.download.KNOWN_SHA256, ("sst2", "train.tsv"), hub.file_sha256(sst2["SST-2/train.tsv"]))
    folder, checked = data.download_task("sst2", str(tmp_path))
    assert checked == 2 and os.path.exists(os.path.join(folder, "SST-2", "dev.tsv"))
    report = data.prepare(data.get_task("sst2"), folder, str(tmp_path))
    assert "validation       872 examples: negative 428, positive 444" in report


@needs_shared
def test_download_data_rejects_checksum_mismatch_and_truncated_archives(data_mirror, tmp_path):
    sst2 = {f"SST-2/{n}": os.path.join(sample("sst2"), n) for n in ("train.tsv", "dev.tsv")}
    data_mirror.files["/sst2/SST-2.zip"] = zip_bytes(sst2)  # train.tsv is not the published file
    with pytest.raises(data.DataError, match="train.tsv: sha256 mismatch with the published file"):
        data.download_task("sst2", str(tmp_path))
    raw = tmp_path / "raw" / "sst2"
    assert not os.path.exists(raw / "files") and not os.listdir(raw / "downloads")
    archive = zip_bytes({f"CoLA/{n}": os.path.join(sample("cola"), n) for n in ("dev.tsv",)})
    data_mirror.files["/cola/CoLA.zip"] = archive[: len(archive) // 2]  # whole as served, but cut short
    with pytest.raises(data.DataError, match="truncated or corrupt archive"):
        data.download_task("cola", str(tmp_path))
    assert not os.path.exists(tmp_path / "raw" / "cola" / "files")
    assert not os.path.exists(tmp_path / "cola")  # no cache was written


@needs_shared
def test_cli_download_data_for_plain_files_and_tar_archives(data_mirror, tmp_path):
    import tarfile
    for name in ("train_5500.label", "TREC_10.label"):
        data_mirror.files[f"/trec/{name}"] = open(os.path.join(sample("trec"), name), "rb").read()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(sample("imdb") + "/aclImdb", arcname="aclImdb")
    data_mirror.files["/imdb/aclImdb_v1.tar.gz"] = buffer.getvalue()
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "spiece.model").write_bytes(open(SPIECE, "rb").read())
    for task, expected in (("trec", "train          5,452 examples"), ("imdb", "test              10 examples")):
        result = run_cli("download-data", task, "--data-dir", str(tmp_path / "cache"), "--model", str(tokenizer),
                         env={"TPV_DATA_MIRROR": data_mirror.url})
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout and "longer than 256 tokens" in result.stdout
    assert "1 checked against published sha256" in run_cli(
        "download-data", "trec", "--data-dir", str(tmp_path / "cache"), "--model", str(tokenizer), "--force",
        env={"TPV_DATA_MIRROR": data_mirror.url}).stdout
    result = run_cli("prepare", "trec", "--from", str(tmp_path / "nowhere"), "--model", str(tokenizer))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no such folder" in result.stderr


# -----------------------------------------------------------------------------
# prompt tuning and evaluation

import signal  # noqa: E402
import time  # noqa: E402

import cli  # noqa: E402
import evaluation  # noqa: E402
import metrics  # noqa: E402
import prompts  # noqa: E402
import train  # noqa: E402
import model_llama  # noqa: E402
from support import devices, resume  # noqa: E402


def thinned_sample(task, folder, rows, files=None):
    """folder/TASK: the task's sample with the files named in `files` (all by default) cut to their first line (a
    header, where the file has one) and every k-th row of the rest, `rows` to twice as many (spread over the
    file, so that every label stays); the other files as they are. The same files through the same code, with
    fewer rows to evaluate."""
    os.makedirs(folder / task)
    for name in os.listdir(sample(task)):
        with open(os.path.join(sample(task), name), encoding="utf-8") as f:
            lines = f.readlines()
        if files is None or name in files:
            lines = lines[:1] + lines[1::max(1, (len(lines) - 1) // rows)]
        with open(folder / task / name, "w", encoding="utf-8") as f:
            f.writelines(lines)
    return folder / task


@pytest.fixture(scope="session")
def tiny(built_once):
    """A tiny random T5 with T5's real vocabulary, and the SST-2 and RTE samples prepared, their held-out file
    (dev.tsv: SST-2's test split, RTE's validation and test) cut to a hundred-odd rows: every run's final
    evaluation reads it, and no test here needs more (one copy for all test processes: the tests read it)."""
    if not os.path.isdir(SHARED):
        pytest.skip("../shared (dataset samples, T5 vocabulary) is not beside this checkout")

    def build(root):
        from transformers import T5Config, T5ForConditionalGeneration
        torch.manual_seed(0)
        T5ForConditionalGeneration(T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                            decoder_start_token_id=0)).save_pretrained(root / "model")
        (root / "model" / "spiece.model").write_bytes(open(SPIECE, "rb").read())
        for name in ("sst2", "rte"):
            thinned = thinned_sample(name, root / "samples", 100, files=["dev.tsv"])
            data.prepare(data.get_task(name), str(thinned), str(root / "data"))
    return built_once("tiny", build)


def train_args(tiny, out, *extra):
    return ["train", "sst2", "--model", str(tiny / "model"), "--data-dir", str(tiny / "data"), "--out", str(out),
            "--max-steps", "120", "--eval-every", "20", "--warmup", "10", "--batch-size", "16", "--log-every", "40",
            *extra]


def run_file(out, name):
    return os.path.join(out, "model", "origin_0", name)


def checkpoint_file(out, *labels):
    """The checkpoint of the pack of the runs `labels` (support/resume.py names it after them)."""
    return resume.pack_checkpoint(os.path.join(out, "model"), list(labels))


def test_schedule_values():
    paper = train.TrainConfig()
    assert train.lr_at(0, paper, 3000) == 0.0  # the first update has lr 0, as in transformers
    assert train.lr_at(250, paper, 3000) == pytest.approx(0.15)
    assert train.lr_at(500, paper, 3000) == pytest.approx(0.3)
    assert train.lr_at(1750, paper, 3000) == pytest.approx(0.15)
    assert train.lr_at(3000, paper, 3000) == 0.0
    assert [train.few_shot_batch_size(n) for n in (5, 25, 50, 250, 500, 1000)] == [2, 2, 8, 8, 16, 16]
    llm = train.recipe("mnli", family=model_llama)  # transformers' cosine schedule, warm-up ceil(0.03 x steps)
    assert train.warmup_steps(llm, 1000) == 30 and train.validation_interval(llm, 1000) == 100
    assert train.lr_at(15, llm, 1000) == pytest.approx(0.15)
    assert train.lr_at(30 + 485, llm, 1000) == pytest.approx(0.15)  # half way down the cosine
    assert train.lr_at(1000, llm, 1000) == 0.0


def test_llm_recipe_is_the_official_one():
    llm = train.recipe("mnli", family=model_llama)
    assert (llm.lr, llm.weight_decay, llm.batch_size, llm.epochs, llm.prompt_len, llm.schedule, llm.warmup_ratio,
            llm.eval_every, llm.loss) == (0.3, 1e-5, 4, 10, 100, "cosine", 0.03, None, "full")
    assert train.recipe("trec", family=model_llama).epochs == 20  # llama31_per_task/trec.toml
    few = train.recipe("scitail", shots=100, family=model_llama)  # no official LLM few-shot configs: T5's numbers
    assert (few.max_steps, few.batch_size, few.validation_limit, few.schedule) == (1000, 8, 250, "cosine")


def test_recipe_fills_task_and_shot_dependent_defaults_and_flags_win():
    assert (train.recipe("mnli").epochs, train.recipe("mnli").batch_size, train.recipe("mnli").max_steps) == (10, 32,
                                                                                                               None)
    assert train.recipe("trec").epochs == 50  # it underfits (prompt_tuning_trec.toml)
    assert train.recipe("dbpedia,trec").epochs == 10  # the official multi-task configs keep 10
    few = train.recipe("scitail", shots=100)
    assert (few.max_steps, few.batch_size, few.validation_limit) == (1000, 8, 250)
    assert train.recipe("scitail", shots=5).batch_size == 2 and train.recipe("scitail", shots=500).batch_size == 16
    mine = train.recipe("trec", shots=100, epochs=3, batch_size=4, lr=0.1)
    assert (mine.epochs, mine.batch_size, mine.lr, mine.max_steps) == (3, 4, 0.1, 1000)
    paper = train.TrainConfig()
    assert (paper.lr, paper.weight_decay, paper.warmup, paper.clip_norm, paper.eval_every, paper.prompt_len) == (
        0.3, 1e-5, 500, 1.0, 100, 50)


def test_files_written_before_version_2_still_load_and_resume(tiny, tmp_path):
    from safetensors.torch import save_file
    old = tmp_path / "old.safetensors"  # a version 1 prompt file, as the first release wrote it
    save_file({"prompt": torch.ones(50, 32), "init": torch.zeros(50, 32)}, str(old),
              metadata={"task": "sst2", "model": "m", "origin": "0", "version": "1"})
    assert torch.equal(prompts.load_vector(str(old)).tau, torch.ones(50, 32))
    config = train.recipe("sst2", max_steps=4)
    state = train.TrainState.new(config, torch.zeros(1, 50, 32), torch.device("cpu"))
    state.prompts.data.fill_(1.0)  # tuned away from its init
    path = str(tmp_path / "old.ckpt.safetensors")
    resume.save(state, path, config, ["origin_0/sst2"], 1)
    tensors, saved = resume.load_checkpoint(path)
    # a checkpoint of one run as tpv wrote them before packs: (n, d) tensors, one run's numbers, no run list
    # and, before version 2, no clip_norm, validation_limit or data_dir
    tensors = {k: v[0] if v.dim() == 3 else v for k, v in tensors.items()}
    saved = {k: v for k, v in saved.items() if k not in ("runs", "pack", "stopped")}
    saved |= {"best_loss": saved["best_loss"][0], "best_step": saved["best_step"][0], "history": []}
    for key in ("clip_norm", "validation_limit", "data_dir"):
        del saved["args"][key]
    save_file(tensors, path, metadata={"state": json.dumps(saved)})
    restored = train.TrainState.new(config, torch.zeros(1, 50, 32), torch.device("cpu"))
    resume.restore(restored, path, config, ["origin_0/sst2"], 1)
    assert torch.equal(restored.prompts, torch.ones(1, 50, 32)) and restored.history == [[]]
    with pytest.raises(resume.ResumeError, match="lr was 0.3, now 0.2"):
        resume.restore(train.TrainState.new(config, torch.zeros(1, 50, 32), torch.device("cpu")), path,
                       dataclasses.replace(config, lr=0.2), ["origin_0/sst2"], 1)


def test_origins_reproduce_the_official_recipe():
    state = np.random.get_state()
    np.random.seed(1024)  # scripts/create_origin.py, with numpy's global generator
    official = [np.random.permutation(range(5000))[:200] for _ in range(10)]
    np.random.set_state(state)
    for i in (0, 3, 9):
        assert prompts.origin_token_ids(i, 50).tolist() == official[i][:50].tolist()
    with pytest.raises(prompts.PromptError, match="origin must be 0..9"):
        prompts.origin_token_ids(10, 50)


def test_prompt_tuning_lowers_the_loss_on_a_fixed_batch(checkpoints):
    model = model_t5.load_t5(checkpoints["t5-v1.0"])
    ids, mask, labels = batch(seed=5, B=4)
    prompt = torch.nn.Parameter(torch.randn(10, 32) * 0.5)
    optimizer = torch.optim.AdamW([prompt], lr=0.3, weight_decay=1e-5)
    losses = []
    for _ in range(100):
        loss = model_t5.run_losses(model, prompt[None], {"input_ids": ids, "attention_mask": mask, "labels": labels})[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0] and max(losses[-10:]) < min(losses[:10]), losses[::10]


def test_train_writes_prompt_init_and_record(tiny, tmp_path, capsys):
    tpv.main(train_args(tiny, tmp_path))
    out = capsys.readouterr().out
    assert "tok/s" in out and "ETA" in out and "validation loss" in out
    prompt, init, meta = prompts.load_prompt(run_file(tmp_path, "sst2.safetensors"))
    model = model_t5.load_t5(str(tiny / "model"))
    assert torch.equal(init, prompts.embedding_rows(model, prompts.origin_token_ids(0, 50)))  # origin_0
    assert prompt.shape == (50, 32) and not torch.equal(prompt, init)  # the vector prompt - init is not zero
    record = json.load(open(run_file(tmp_path, "sst2.json")))
    losses = [h["validation_loss"] for h in record["history"]]
    assert len(losses) == 6 and record["best_validation_loss"] == min(losses)
    assert record["best_step"] == record["history"][losses.index(min(losses))]["step"]
    assert meta["best_step"] == str(record["best_step"]) and "f1" in record["test"]["sst2"]
    assert not os.path.exists(checkpoint_file(tmp_path, "origin_0/sst2"))  # finished runs keep no checkpoint


def test_best_prompt_by_validation_loss_is_the_one_saved(tiny, tmp_path, monkeypatch):
    seen, scripted = [], iter([5.0, 2.0, 3.0, 4.0, 2.5, 6.0])
    def fake_validation_losses(model, tokens, prompts, autocast, make_batch):
        seen.append(prompts[0].detach().clone())
        return [next(scripted)]
    monkeypatch.setattr(evaluation, "validation_losses", fake_validation_losses)
    tpv.main(train_args(tiny, tmp_path))
    prompt, _, meta = prompts.load_prompt(run_file(tmp_path, "sst2.safetensors"))
    assert meta["best_step"] == "40" and torch.equal(prompt, seen[1])


def checkpoint_step(path):
    try:
        return resume.load_checkpoint(path)[1]["step"]
    except Exception:  # not there yet, or being replaced
        return 0


def interrupt_then_resume(tiny, out, sig, *extra, labels=("origin_0/sst2",)):
    args = train_args(tiny, out, "--max-steps", "160", *extra)
    # SIGINT as at a terminal: a shell's background job (nohup ... &) starts with it ignored, and Python keeps that
    process = subprocess.Popen([sys.executable, os.path.join(HERE, "tpv.py"), *args], cwd=HERE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt = checkpoint_file(out, *labels)
    deadline = time.time() + 120
    while checkpoint_step(ckpt) < 40 and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert not os.path.exists(run_file(out, "sst2.safetensors")), "the run finished before it was interrupted"
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    return process.returncode, stderr


@pytest.fixture(scope="session")
def uninterrupted_run(tiny, built_once):
    """interrupt_then_resume's run trained without a signal, in this process (one copy for all test processes)."""
    return built_once("uninterrupted_run", lambda out: tpv.main(train_args(tiny, out, "--max-steps", "160")))


@pytest.mark.usefixtures("cli_in_process")
def test_sigkill_and_resume_give_a_bit_identical_prompt(tiny, uninterrupted_run, tmp_path):
    code, _ = interrupt_then_resume(tiny, tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    a, _, _ = prompts.load_prompt(run_file(uninterrupted_run, "sst2.safetensors"))
    b, _, _ = prompts.load_prompt(run_file(tmp_path, "sst2.safetensors"))
    assert torch.equal(a, b)


@pytest.mark.usefixtures("cli_in_process")
def test_sigint_saves_and_resume_gives_a_bit_identical_prompt(tiny, uninterrupted_run, tmp_path):
    """Ctrl-C saves, then leaves with exit status 2 and a line naming --resume."""
    code, stderr = interrupt_then_resume(tiny, tmp_path, signal.SIGINT)
    assert code == 2 and "interrupted at step" in stderr and "--resume" in stderr
    a, _, _ = prompts.load_prompt(run_file(uninterrupted_run, "sst2.safetensors"))
    c, _, _ = prompts.load_prompt(run_file(tmp_path, "sst2.safetensors"))
    assert torch.equal(a, c)


@pytest.mark.usefixtures("cli_in_process")
def test_resume_with_different_arguments_is_refused(tiny, tmp_path, monkeypatch):
    calls, real = [], model_t5.run_losses
    def interrupt_at_25(*a, **k):  # Ctrl-C during the 25th loss computation
        calls.append(1)
        if len(calls) == 25:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(model_t5, "run_losses", interrupt_at_25)
    with pytest.raises(SystemExit) as e:
        tpv.main(train_args(tiny, tmp_path))
    assert e.value.code == 2 and os.path.exists(checkpoint_file(tmp_path, "origin_0/sst2"))
    result = run_cli(*train_args(tiny, tmp_path, "--lr", "0.1", "--resume"))
    assert result.returncode == 2 and "--resume with different arguments: lr was 0.3, now 0.1" in result.stderr
    result = run_cli(*train_args(tiny, tmp_path))
    assert result.returncode == 2 and "continue with --resume, or start over with --force" in result.stderr


def test_a_checkpoint_in_the_layout_before_pack_names_still_resumes(tiny, tmp_path, monkeypatch):
    """tpv kept a pack's checkpoint as its first run's origin_0/<name>.ckpt.safetensors (and, with fp16 gone, an
    empty "scaler" entry): --resume moves it to its pack's name and continues bit for bit."""
    pack = ["--origins", "0,1", "--max-steps", "40", "--scoring", "rank"]
    assert cli_run(train_args(tiny, tmp_path / "a", *pack)) == 0
    calls, real = [], model_t5.run_losses
    def interrupt_at_25(*a, **k):
        calls.append(1)
        if len(calls) == 25:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(model_t5, "run_losses", interrupt_at_25)
    assert cli_run(train_args(tiny, tmp_path / "b", *pack)) == 2
    monkeypatch.undo()
    new, old = checkpoint_file(tmp_path / "b", "origin_0/sst2", "origin_1/sst2"), run_file(tmp_path / "b",
                                                                                          "sst2.ckpt.safetensors")
    tensors, state = resume.load_checkpoint(new)
    from safetensors.torch import save_file
    save_file(tensors, old, metadata={"state": json.dumps({**state, "scaler": {}})})
    os.remove(new)
    assert cli_run(train_args(tiny, tmp_path / "b", *pack, "--resume")) == 0
    assert not os.path.exists(old) and not os.path.exists(new)
    for origin in (0, 1):
        assert torch.equal(prompt_and_history(tmp_path / "a", origin)[0], prompt_and_history(tmp_path / "b", origin)[0])
    # a run's checkpoint from before packs: (n, d) tensors, one run's numbers, no run list; it keeps its run
    single = ["--max-steps", "40", "--scoring", "rank"]
    monkeypatch.setattr(model_t5, "run_losses", interrupt_at_25)
    calls.clear()
    assert cli_run(train_args(tiny, tmp_path / "c", *single)) == 2
    monkeypatch.undo()
    new, old = checkpoint_file(tmp_path / "c", "origin_0/sst2"), run_file(tmp_path / "c", "sst2.ckpt.safetensors")
    tensors, state = resume.load_checkpoint(new)
    state = {k: v for k, v in state.items() if k not in ("runs", "pack", "stopped")}
    state |= {k: state[k][0] for k in ("best_loss", "best_step", "history")}
    save_file({k: v[0] if v.dim() == 3 else v for k, v in tensors.items()}, old, metadata={"state": json.dumps(state)})
    os.remove(new)
    assert cli_run(train_args(tiny, tmp_path / "c", *single, "--resume")) == 0
    assert cli_run(train_args(tiny, tmp_path / "d", *single)) == 0
    assert torch.equal(prompt_and_history(tmp_path / "c", 0)[0], prompt_and_history(tmp_path / "d", 0)[0])


def test_every_family_provides_the_whole_interface():
    import families
    for module in set(families.FAMILIES.values()):
        assert [name for name in families.INTERFACE if not hasattr(module, name)] == [], module.__name__
        assert families.BY_NAME[module.FAMILY] is module
    documented = families.__doc__
    assert all(name in documented for name in families.INTERFACE)


def nan_for_run(run, at_call, real):
    """A packed_loss that makes `run`'s loss NaN at the at_call-th training step."""
    calls = []
    def patched(model, prompts, batch):
        losses = real(model, prompts, batch)
        if torch.is_grad_enabled():  # not the validation passes
            calls.append(1)
            if len(calls) == at_call:
                return losses * torch.tensor([float("nan") if r == run else 1.0 for r in range(len(losses))])
        return losses
    return patched


def test_non_finite_loss_stops_the_run_with_step_and_batch_and_saves_nothing_bad(tiny, tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.setattr(model_t5, "run_losses", nan_for_run(0, 30, model_t5.run_losses))
    with pytest.raises(SystemExit) as e:
        tpv.main(train_args(tiny, tmp_path))
    assert e.value.code == 2
    message = capsys.readouterr().err
    assert "1 of 1 run(s) stopped: origin_0/sst2: non-finite loss at step 30 (epoch 1, batch" in message
    assert "its best prompt so far: the prompt of step 20" in message and "sst2.failed.json" in message
    failure = json.load(open(run_file(tmp_path, "sst2.failed.json")))
    assert failure["steps"] == 29 and [h["step"] for h in failure["history"]] == [20] and "non-finite" in failure[
        "reason"]
    # no prompt and no record: the run is not finished, so run.sh retries it; and nothing non-finite was kept
    assert not os.path.exists(run_file(tmp_path, "sst2.safetensors")) and not os.path.exists(run_file(tmp_path,
                                                                                                       "sst2.json"))
    assert not os.path.exists(checkpoint_file(tmp_path, "origin_0/sst2"))


# -----------------------------------------------------------------------------
# packed runs: every run of a pack is the run alone

def test_one_adamw_over_a_stack_is_r_adamws():
    torch.manual_seed(0)
    stacked = torch.nn.Parameter(torch.randn(3, 5, 4))
    alone = [torch.nn.Parameter(stacked.detach()[r].clone()) for r in range(3)]
    optimizers = [torch.optim.AdamW([p], lr=0.3, weight_decay=1e-5) for p in alone]
    packed = torch.optim.AdamW([stacked], lr=0.3, weight_decay=1e-5)
    for step in range(5):
        grads = torch.randn(3, 5, 4) * 10 ** torch.arange(-2, 1).view(3, 1, 1)  # three scales
        stacked.grad = grads.clone()
        packed.step()
        for r, (p, optimizer) in enumerate(zip(alone, optimizers)):
            p.grad = grads[r].clone()
            optimizer.step()
    assert all(torch.equal(stacked.detach()[r], alone[r].detach()) for r in range(3))  # element-wise: bit for bit


def test_each_run_clips_its_own_gradient_and_gets_its_own_loss(tiny):
    grads = torch.randn(3, 50, 32)
    grads[0] *= 1e6 / grads[0].norm()  # a huge gradient: clipped to norm 1
    grads[1] *= 1e-3 / grads[1].norm()  # a tiny one: left as it is (another run's size does not shrink it)
    alone = [g.clone() for g in grads]
    norms = train.clip_per_run(grads, 1.0)
    for r in range(3):
        p = torch.nn.Parameter(torch.zeros(50, 32))
        p.grad = alone[r]
        assert norms[r].item() == pytest.approx(torch.nn.utils.clip_grad_norm_([p], 1.0).item(), rel=1e-6)
        torch.testing.assert_close(grads[r], p.grad, rtol=1e-6, atol=0)
    assert grads[0].norm().item() == pytest.approx(1.0, rel=1e-5) and grads[1].norm().item() == pytest.approx(1e-3)
    # the packed loss of each run, and its gradient, is its loss alone
    model = model_t5.load_t5(str(tiny / "model"))
    model_t5.set_dropout(model, 0.0)
    tok = model_t5.load_tokenizer(str(tiny / "model"))
    tokens = data.split_tokens(data.get_task("sst2"), ["train"], tok, str(tiny / "data"))["train"][0]
    batch_ = data.collate(tokens, np.arange(4))
    prompts_ = torch.nn.Parameter(torch.randn(3, 50, 32) * torch.tensor([1.0, 100.0, 0.01]).view(3, 1, 1))
    model_t5.run_losses(model, prompts_, batch_).sum().backward()
    for r in range(3):
        p = torch.nn.Parameter(prompts_.detach()[r].clone())
        loss = model_t5.run_losses(model, p[None], batch_)[0]
        loss.backward()
        torch.testing.assert_close(p.grad, prompts_.grad[r], rtol=1e-5, atol=1e-7)


def test_a_stopped_run_no_longer_moves_and_the_others_do_as_alone():
    config = train.recipe("sst2", max_steps=10)
    state = train.TrainState.new(config, torch.randn(3, 5, 4), torch.device("cpu"))
    alone = train.TrainState.new(config, state.inits[2:].clone(), torch.device("cpu"))
    for step in range(6):
        if step == 2:
            state.stopped[1] = {"reason": "test", "steps": 2}
            frozen = [t[1].clone() for t in [state.prompts.data, *state.moments()]]
        grads = torch.randn(3, 5, 4)
        if step >= 2:
            grads[1] = float("nan")  # what a stopped run's gradient may hold: it must reach nothing
        state.prompts.grad, alone.prompts.grad = grads.clone(), grads[2:].clone()
        state.step_optimizer()
        alone.step_optimizer()
    assert all(torch.equal(t[1], f) for t, f in zip([state.prompts.data, *state.moments()], frozen))
    assert torch.equal(state.prompts.data[2], alone.prompts.data[0]) and state.running() == [0, 2]


def packed_run(tiny, out, *extra):
    return cli_run(train_args(tiny, out, "--max-steps", "40", "--dropout", "0", "--scoring", "rank", *extra))


def cli_run(argv):
    code = 0
    try:
        tpv.main(argv)
    except SystemExit as e:
        code = e.code
    return code


def prompt_and_history(out, origin, name="sst2"):
    path = os.path.join(out, "model", f"origin_{origin}", name)
    return prompts.load_prompt(path + ".safetensors")[0], json.load(open(path + ".json"))


def test_packed_runs_equal_the_runs_alone_and_record_their_pack(tiny, tmp_path, capsys):
    assert packed_run(tiny, tmp_path / "packed", "--origins", "0,3") == 0
    assert "2 runs packed" in capsys.readouterr().out
    for origin in (0, 3):
        assert packed_run(tiny, tmp_path / "alone", "--origin", str(origin)) == 0
        packed, packed_record = prompt_and_history(tmp_path / "packed", origin)
        alone, alone_record = prompt_and_history(tmp_path / "alone", origin)
        torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-6)
        losses = lambda record: [h["validation_loss"] for h in record["history"]]
        assert losses(packed_record) == pytest.approx(losses(alone_record), rel=1e-5)
        assert packed_record["arguments"] == alone_record["arguments"] | {"out": str(tmp_path / "packed")}
        assert packed_record["pack"]["runs"] == ["origin_0/sst2", "origin_3/sst2"]
        assert alone_record["pack"]["runs"] == [f"origin_{origin}/sst2"] and packed_record["torch"] == torch.__version__
    # a finished pack is skipped, and says so
    assert packed_run(tiny, tmp_path / "packed", "--origins", "0,3") == 2
    assert "all 2 runs of this command are finished (pass --force" in capsys.readouterr().err


def test_a_run_that_stops_on_a_validation_step_fails_with_one_line(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(model_t5, "run_losses", nan_for_run(0, 10, model_t5.run_losses))
    assert cli_run(train_args(tiny, tmp_path, "--max-steps", "20", "--eval-every", "10")) == 2
    assert "1 of 1 run(s) stopped: origin_0/sst2: non-finite loss at step 10" in capsys.readouterr().err
    failure = json.load(open(run_file(tmp_path, "sst2.failed.json")))  # plain JSON: never validated is null
    assert failure["steps"] == 9 and failure["history"] == [] and failure["best_validation_loss"] is None


def test_a_non_finite_run_stops_alone_and_the_others_finish(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(model_t5, "run_losses", nan_for_run(1, 10, model_t5.run_losses))
    assert packed_run(tiny, tmp_path, "--origins", "0-2") == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]  # (the lines before it: the test evaluation's progress)
    assert last.startswith("tpv: error: 1 of 3 run(s) stopped: origin_1/sst2: non-finite loss at step 10"), err
    assert json.load(open(os.path.join(tmp_path, "model", "origin_1", "sst2.failed.json")))["steps"] == 9
    assert not os.path.exists(os.path.join(tmp_path, "model", "origin_1", "sst2.json"))
    for origin in (0, 2):
        _, record = prompt_and_history(tmp_path, origin)
        assert record["steps"] == 40 and "sst2" in record["test"]
    # run again (as run.sh does): the stopped run is trained, the finished ones are skipped; its failure record goes
    monkeypatch.undo()
    assert packed_run(tiny, tmp_path, "--origins", "0-2") == 0
    assert "skipped origin_0/sst2: finished" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(tmp_path, "model", "origin_1", "sst2.failed.json"))


@pytest.mark.usefixtures("cli_in_process")
def test_sigkill_and_resume_of_a_pack_give_bit_identical_prompts(tiny, tmp_path):
    pack = ["--origins", "0,1", "--max-steps", "120", "--scoring", "rank"]
    reference = run_cli(*train_args(tiny, tmp_path / "a", *pack))
    assert reference.returncode == 0, reference.stderr
    code, _ = interrupt_then_resume(tiny, tmp_path / "b", signal.SIGKILL, *pack,
                                    labels=("origin_0/sst2", "origin_1/sst2"))  # dropout on
    assert code == -signal.SIGKILL
    for origin in (0, 1):
        assert torch.equal(prompt_and_history(tmp_path / "a", origin)[0], prompt_and_history(tmp_path / "b", origin)[0])


def test_packed_evaluation_equals_one_prompt_at_a_time(tiny, tmp_path, capsys):
    assert packed_run(tiny, tmp_path, "--origins", "0") == 0
    assert packed_run(tiny, tmp_path, "--init", "random", "--name", "other") == 0
    capsys.readouterr()
    common = ["--model", str(tiny / "model"), "--data-dir", str(tiny / "data"), "--out", str(tmp_path), "--split",
              "validation"]
    results = {}
    for prompt_args in (["--prompt", "sst2"], ["--prompt", "other"], ["--prompt", "sst2", "--prompt", "other"]):
        assert cli_run(["eval", "sst2", *prompt_args, *common]) == 0
        results[len(results)] = [json.loads(line) for line in capsys.readouterr().out.splitlines()
                                 if line.startswith("{")]
    assert results[2] == results[0] + results[1]


def test_metrics_against_hand_computed_values():
    sst2, mnli, stsb = data.get_task("sst2"), data.get_task("mnli"), data.get_task("stsb")
    golds = ["positive", "positive", "negative", "negative", "positive"]
    preds = ["positive", "negative", "negative", "banana", "positive"]
    m = metrics.task_metrics(sst2, preds, golds)
    # invalid -> wrong label: preds become P N N P P; tp 2, fp 1, fn 1 -> F1 = 4/6
    assert m["accuracy"] == 0.6 and m["invalid"] == 1 and m["f1"] == pytest.approx(4 / 6)
    golds = ["entailment", "neutral", "contradiction", "neutral"]
    preds = ["entailment", "entailment", "contradiction", "nonsense"]
    m = metrics.task_metrics(mnli, preds, golds)
    # F1: entailment 2/3 (tp1 fp1 fn0), neutral 0, contradiction 1 -> macro (2/3 + 0 + 1) / 3
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1) / 3) and m["invalid"] == 1 and m["exact_match"] == 0.5
    m = metrics.task_metrics(stsb, ["1.0", "2.0", "3.0", "x"], ["1.0", "2.0", "4.0", "5.0"])
    assert m["invalid"] == 1 and m["pearson"] == pytest.approx(np.corrcoef([1, 2, 3, -1], [1, 2, 4, 5])[0, 1])
    assert m["spearman"] == pytest.approx(-0.2)  # ranks (2,3,4,1) vs (1,2,3,4): 1 - 6*12/(4*15)
    assert metrics.ranks([3, 1, 3]).tolist() == [2.5, 1.0, 2.5]
    assert metrics.task_metrics(sst2, ["positive"], ["positive"])["exact_match"] == 1.0  # no 16-char cut


def test_generation_and_rank_scoring_agree_on_a_model_that_has_learnt_the_labels(tiny):
    model = model_t5.load_t5(str(tiny / "model"))
    tok = model_t5.load_tokenizer(str(tiny / "model"))
    model_t5.set_dropout(model, 0.0)
    task = data.get_task("sst2")
    tokens, rows = data.split_tokens(task, ["validation"], tok, str(tiny / "data"))["validation"]
    idx = np.arange(16)
    batch_ = data.collate(tokens, idx)
    torch.manual_seed(0)
    model.requires_grad_(True)  # fine-tune the whole tiny model until it emits label words
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        F.cross_entropy(model(batch_["input_ids"], model_t5.shift_right(batch_["labels"]), batch_["attention_mask"])
                        .flatten(0, 1), batch_["labels"].flatten(), ignore_index=-100).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.requires_grad_(False)
    subset = data.select(tokens, idx)
    [generated] = evaluation.predict(model, task, subset, tok, None, "generate")
    [ranked] = evaluation.predict(model, task, subset, tok, None, "rank")
    assert all(g in task.labels for g in generated) and generated == ranked
    assert generated == [task.target(rows[i]) for i in idx]


@pytest.mark.usefixtures("cli_in_process")
def test_train_and_eval_user_errors(tiny, tmp_path):
    base = ["--model", str(tiny / "model"), "--data-dir", str(tiny / "data"), "--out", str(tmp_path)]
    cases = [(["train", "mnlx", *base], "unknown task 'mnlx'"),
             (["train", "qnli", *base], "python tpv.py download-data qnli"),
             (["train", "sst2", "--model", str(tmp_path / "none"), "--data-dir", str(tiny / "data")],
              "no such model folder"),
             (["eval", "sst2", "--prompt", "rte", *base], "train it with: python tpv.py train rte --origin 0"),
             (["train", "sst2", "--init", "rte+sst2", *base], "no trained prompt for rte on origin 0")]
    wide = tmp_path / "wide.safetensors"
    prompts.save_prompt(str(wide), torch.zeros(50, 64), torch.zeros(50, 64), {"model": str(tiny / "model")})
    cases.append((["eval", "sst2", "--prompt", str(wide), *base], "prompt width 64 does not fit the model's width 32"))
    other = tmp_path / "other.safetensors"
    prompts.save_prompt(str(other), torch.zeros(50, 32), torch.zeros(50, 32), {"model": "t5-small"})
    cases.append((["eval", "sst2", "--prompt", str(other), *base], "trained on t5-small"))
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "0", "must be at least 1, got 0"), ("--epochs", "0", "must be at least 1"),
    ("--max-steps", "-3", "must be at least 1"), ("--eval-every", "0", "must be at least 1"),
    ("--log-every", "0", "must be at least 1"), ("--prompt-len", "-1", "must be at least 0"),
    ("--warmup", "-5", "must be at least 0"), ("--shots", "-2", "must be at least 0"),
    ("--lr", "-1", "must be at least 0"), ("--weight-decay", "-0.5", "must be at least 0"),
    ("--dropout", "1", "must be in [0, 1)"), ("--epochs", "1.5", "invalid int value: '1.5'")])
def test_out_of_range_numbers_are_one_line_errors(flag, value, message, capsys):
    with pytest.raises(SystemExit) as stop:  # before this check, --eval-every 0 crashed deep in the loop
        cli.build_parser().parse_args(["train", "sst2", flag, value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {flag}: {message}" in err and err.count("\n") == 1, err


@pytest.mark.usefixtures("cli_in_process")
def test_init_from_task_vectors_zero_shot_and_multi_task(tiny, tmp_path):
    quick = ["--max-steps", "4", "--eval-every", "2", "--warmup", "1"]
    for task in ("sst2", "rte", "sst2,rte"):
        result = run_cli(*train_args(tiny, tmp_path, *quick)[:1], task, *train_args(tiny, tmp_path, *quick)[2:])
        assert result.returncode == 0, result.stderr
    result = run_cli(*train_args(tiny, tmp_path, "--shots", "0", "--init", "sst2+rte")[:1], "rte",
                     *train_args(tiny, tmp_path, "--shots", "0", "--init", "sst2+rte")[2:])
    assert result.returncode == 0, result.stderr
    load = lambda name: prompts.load_prompt(run_file(tmp_path, name + ".safetensors"))
    (sst2, origin, _), (rte, origin2, _) = load("sst2"), load("rte")
    zero, zero_init, meta = load("rte_0shots_init-sst2+rte")
    assert torch.equal(origin, origin2) and meta["shots"] == "0"
    # the paper's origin + 1 * (tau_sst2 + tau_rte), exactly as prompts.add and prompts.apply compute it; the sum
    # in another order differs only by rounding
    torch.testing.assert_close(zero_init, origin + 1.0 * ((sst2 - origin) + (rte - origin)), rtol=0, atol=0)
    torch.testing.assert_close(zero_init, origin + (sst2 - origin) + (rte - origin), rtol=0, atol=1e-6)
    assert torch.equal(zero, zero_init)  # zero shots: no training
    assert "rte" in json.load(open(run_file(tmp_path, "sst2,rte.json")))["test"]  # multi-task: every task tested
    # a vector from another origin does not add onto this one
    moved = run_file(tmp_path, "moved.safetensors")
    prompts.save_prompt(moved, sst2, origin + 1, {"model": str(tiny / "model")})
    result = run_cli(*train_args(tiny, tmp_path, "--init", "moved")[:1], "rte",
                     *train_args(tiny, tmp_path, "--init", "moved")[2:])
    assert result.returncode == 2 and "was not trained from origin_0" in result.stderr


@pytest.mark.usefixtures("cli_in_process")
def test_bf16_autocast_on_cpu_trains_an_fp32_prompt(tiny, tmp_path):
    result = run_cli(*train_args(tiny, tmp_path, "--precision", "bf16", "--max-steps", "6", "--eval-every", "3"))
    assert result.returncode == 0, result.stderr
    assert "bf16, cpu" in result.stdout
    emulated = "warning: this CPU has no native bf16" in result.stdout  # one line before training, where emulated
    assert emulated == devices.bf16_is_emulated(torch.device("cpu"))
    prompt, _, _ = prompts.load_prompt(run_file(tmp_path, "sst2.safetensors"))
    assert prompt.dtype == torch.float32 and torch.isfinite(prompt).all()
    result = run_cli(*train_args(tiny, tmp_path / "x", "--precision", "fp16"))  # removed: T5 overflows in fp16
    assert result.returncode == 2 and "use bf16" in result.stderr and "or fp32" in result.stderr
    assert result.stderr.count("\n") == 1 and not os.path.exists(tmp_path / "x")


# -----------------------------------------------------------------------------
# task prompt vectors: arithmetic, experiments, plots, interchange

import xml.etree.ElementTree as ET  # noqa: E402

import experiments  # noqa: E402
from support import plots  # noqa: E402


def make_vector(name, seed, origin=0.0, model="m", shape=(4, 3)):
    tau = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return prompts.Vector(tau, torch.full(shape, origin), model, name)


def test_vector_algebra_identities():
    a, b, c = make_vector("a", 1), make_vector("b", 2), make_vector("c", 3)
    assert torch.allclose(prompts.add(a, b).tau, prompts.add(b, a).tau)
    assert torch.allclose(prompts.add(prompts.add(a, b), c).tau, prompts.add(a, prompts.add(b, c)).tau)
    assert torch.equal(prompts.add(a, prompts.neg(a)).tau, torch.zeros(4, 3))
    assert torch.allclose(prompts.sub(a, b).tau, prompts.add(a, prompts.scale(b, -1)).tau)
    assert torch.allclose(prompts.scale(prompts.add(a, b), 0.5).tau, 0.5 * a.tau + 0.5 * b.tau)
    assert prompts.add(a, b, c).name == "a+b+c"
    for other, message in ((make_vector("x", 4, origin=1.0), "different initial prompts"),
                           (make_vector("x", 4, model="n"), "different models"),
                           (make_vector("x", 4, shape=(4, 5)), "differ in width"),
                           (make_vector("x", 4, shape=(5, 3)), "differ in length")):
        with pytest.raises(prompts.PromptError, match=message):
            prompts.add(a, other)


def test_apply_lambda_zero_is_the_origin_and_one_is_the_tuned_prompt(tmp_path):
    init = torch.randn(4, 3)
    tuned = init + torch.randn(4, 3)
    prompts.save_prompt(str(tmp_path / "t.safetensors"), tuned, init, {"model": "m"})
    v = prompts.load_vector(str(tmp_path / "t.safetensors"))
    assert torch.equal(prompts.apply(init, v, 0.0), init)
    torch.testing.assert_close(prompts.apply(init, v, 1.0), tuned, rtol=0, atol=1e-6)
    with pytest.raises(prompts.PromptError, match="another initial prompt"):
        prompts.apply(init + 1, v)
    assert torch.equal(prompts.apply(init + 1, v, 1.0, check_origin=False), init + 1 + v.tau)


def test_lambda_sweep_picks_the_best_mean_validation_score(monkeypatch):
    tasks = [data.get_task("sst2"), data.get_task("rte")]
    curve = {"sst2": lambda lam: 1 - (lam - 0.3) ** 2, "rte": lambda lam: 1 - (lam - 0.5) ** 2}
    monkeypatch.setattr(data, "split_tokens", lambda task, splits, tok, root: {s: None for s in splits})
    monkeypatch.setattr(evaluation, "evaluate_all", lambda model, tok, task, split_data, prompts_, **kw:
                        [{"exact_match": curve[task.name](float(p[0, 0]))} for p in prompts_])
    v = make_vector("v", 0, origin=0.0)
    v = v._replace(tau=torch.ones(4, 3))  # origin 0 + lam * 1: the prompt's first entry is lam itself
    model = torch.nn.Linear(1, 1)
    lam, sweep = experiments.lambda_sweep(model, None, tasks, torch.zeros(4, 3), v, None)
    assert lam == 0.4 and len(sweep) == 21 and [s["lambda"] for s in sweep][:3] == [0.0, 0.05, 0.1]
    assert sweep[8]["mean"] == max(s["mean"] for s in sweep)


def test_cosine_definitions_on_hand_made_vectors():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    assert experiments.cosine(a, b, "flat") == pytest.approx(0.0)  # (1 - 1) / (sqrt2 * sqrt2)
    assert experiments.cosine(a, b, "mean") == pytest.approx(0.0)  # (.5,.5) vs (.5,-.5)
    c = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    assert experiments.cosine(a, c, "flat") == pytest.approx(1 / 2 ** 0.5)
    assert experiments.cosine(a, c, "mean") == pytest.approx(1 / 2 ** 0.5)
    tensors = {("x", 0): a, ("x", 1): a, ("y", 0): b, ("y", 1): c}
    m = experiments.similarity_matrix(tensors, ["x", "y"], [0, 1], "flat")
    assert m[0][0] == pytest.approx(1.0)  # x on origin 0 vs x on origin 1
    assert m[0][1] == pytest.approx((experiments.cosine(a, c, "flat") + experiments.cosine(a, b, "flat")) / 2)


def test_svg_plots_parse_and_name_every_label():
    names = ["mnli", "qnli", "yelp_polarity"]
    svg = plots.heatmap([[1.0, 0.2, None], [0.2, 1.0, -0.5], [0.1, -0.5, 1.0]], names, names, "cosine & more")
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert all(texts.count(n) == 2 for n in names) and "cosine & more" in texts and "-0.50" in texts
    svg = plots.line_chart({"random origin": [(0.5, 0.1), None], "mnli+qnli": [(0.7, 0.0), (0.8, 0.05)]},
                           [0, 100], "scitail", "shots", "F1")
    texts = [t.text for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]
    assert {"random origin", "mnli+qnli", "scitail", "shots", "F1", "0", "100"} <= set(texts)


@pytest.mark.usefixtures("cli_in_process")
def test_experiment_commands_end_to_end(tiny, tmp_path):
    base = ["--model", str(tiny / "model"), "--data-dir", str(tiny / "data"), "--out", str(tmp_path)]
    quick = ["--max-steps", "4", "--eval-every", "2", "--warmup", "1"]
    for task in ("sst2", "rte"):  # both origins in one pack (packed runs equal the runs alone: tested above)
        assert run_cli("train", task, "--origins", "0,1", *base, *quick).returncode == 0
    results = str(tmp_path / "results")
    result = run_cli("add", "sst2", "rte", *base)
    assert result.returncode == 0, result.stderr
    record = json.load(open(run_file(tmp_path, "sst2+rte.json")))
    assert len(record["sweep"]) == 21 and set(record["relative"]) == {"sst2", "rte"}
    summed, origin, _ = prompts.load_prompt(run_file(tmp_path, "sst2+rte.safetensors"))
    expected = origin + record["lambda"] * sum(prompts.load_vector(run_file(tmp_path, f"{t}.safetensors")).tau
                                               for t in ("sst2", "rte"))
    torch.testing.assert_close(summed, expected)
    assert run_cli("cross-origin", "sst2", "--results", results, *base).returncode == 0
    assert set(json.load(open(tmp_path / "results" / "cross_origin.json"))["sst2"]["pairs"]) == {"0,0", "0,1", "1,0",
                                                                                                 "1,1"}
    assert run_cli("similarity", "--results", results, *base).returncode == 0
    for kind in ("prompts", "vectors"):
        for definition in ("flat", "mean"):
            svg = ET.parse(tmp_path / "results" / f"similarity_{kind}_{definition}.svg").getroot()
            assert {"sst2", "rte"} <= {t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")}
    assert run_cli("report", "--results", results, *base).returncode == 0
    report = open(tmp_path / "results" / "README.md").read()
    for heading in ("Single-task prompt tuning", "Zero-shot addition", "Cross-origin", "Cosine similarity"):
        assert heading in report
    # user mistakes
    for args, message in ((["add", "sst2", "cola", *base], "python tpv.py train cola --origin 0"),
                          (["add", "sst2", "rte", "--lambda", "2", *base], "--lambda 2 is out of range"),
                          (["cross-origin", "rte", "--origins", "0,5", "--results", results, *base],
                           "no trained prompt for rte on origin 5")):
        result = run_cli(*args)
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    other = run_file(tmp_path, "rte.safetensors")  # an rte prompt trained from another init than origin_0
    p, i, meta = prompts.load_prompt(other)
    prompts.save_prompt(other, p, i + 1, meta)
    result = run_cli("add", "sst2", "rte", "--force", *base)
    assert result.returncode == 2 and "different initial prompts" in result.stderr
    (tmp_path / "model" / "origin_0" / "rte.safetensors").write_bytes(b"not a safetensors file")
    result = run_cli("add", "sst2", "rte", "--force", *base)
    assert result.returncode == 2 and "unreadable safetensors file" in result.stderr


@pytest.mark.usefixtures("cli_in_process")
def test_export_loads_in_peft_and_import_round_trips(tiny, tmp_path):
    from peft import PeftModel
    from transformers import T5ForConditionalGeneration
    base = ["--model", str(tiny / "model"), "--data-dir", str(tiny / "data"), "--out", str(tmp_path)]
    model = model_t5.load_t5(str(tiny / "model"))
    init = prompts.embedding_rows(model, prompts.origin_token_ids(0, 50))
    tuned = init + 0.1 * torch.randn(50, 32)
    prompts.save_prompt(run_file(tmp_path, "sst2.safetensors"), tuned, init, {"model": str(tiny / "model")})
    assert run_cli("export", "sst2", "--peft", str(tmp_path / "adapter"), *base).returncode == 0
    peft_model = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(str(tiny / "model")).eval(),
                                           str(tmp_path / "adapter")).eval()
    assert torch.equal(peft_model.get_prompt(batch_size=1)[0], tuned)  # PEFT's encoder input prompt is ours
    ids, mask, labels = torch.randint(3, 32000, (2, 9)), torch.ones(2, 9, dtype=torch.long), torch.tensor([[5, 1]] * 2)
    with torch.no_grad():
        theirs = peft_model(input_ids=ids, attention_mask=mask, labels=labels).logits
        ours = model(ids, model_t5.shift_right(labels), mask, prompt=tuned)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # PEFT adapter -> prompt file; the official .bin releases (dict or bare tensor; 100 rows, encoder half first)
    assert run_cli("import", str(tmp_path / "adapter"), "--task", "again", *base).returncode == 0
    again, again_init, _ = prompts.load_prompt(run_file(tmp_path, "again.safetensors"))
    assert torch.equal(again, tuned) and torch.equal(again_init, init)
    official = torch.cat([tuned, torch.randn(50, 32)])
    torch.save({"prompt_embeddings": official}, tmp_path / "sst2_text.bin")
    torch.save(official, tmp_path / "bare.bin")
    for name in ("sst2_text.bin", "bare.bin"):
        assert run_cli("import", str(tmp_path / name), "--task", name[:-4], *base).returncode == 0
        assert torch.equal(prompts.load_prompt(run_file(tmp_path, name[:-4] + ".safetensors"))[0], tuned)
    (tmp_path / "evil.bin").write_bytes(b"\x80\x04cos\nsystem\n(S'echo hacked'\ntR.")  # a pickle that runs code
    # in a process of its own: its `echo` would write to the process's stdout, which only a process captures
    result = tpv_process("import", str(tmp_path / "evil.bin"), "--task", "evil", *base)
    assert result.returncode == 2 and "not an official prompt file" in result.stderr and "hacked" not in result.stdout


# -----------------------------------------------------------------------------
# bad inputs at the command line: one line and exit status 2 (or the better outcome), and no file changed

@pytest.fixture(scope="session")
def finished(tiny, built_once):
    """Runs as a user leaves them: sst2 and rte trained on origin 0, and an sst2 run whose final evaluation was
    interrupted (its checkpoint is all that is left). One copy for all test processes: the tests copy it."""
    def build(out):
        quick = ["--max-steps", "4", "--eval-every", "2", "--warmup", "1"]
        for task in ("sst2", "rte"):
            tpv.main(train_args(tiny, out, *quick)[:1] + [task] + train_args(tiny, out, *quick)[2:])
        real = evaluation.evaluate_all  # Ctrl-C in the test evaluation:
        evaluation.evaluate_all = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)
        try:
            with pytest.raises(SystemExit):
                tpv.main(train_args(tiny, out, *quick, "--name", "killed"))
        finally:
            evaluation.evaluate_all = real
        assert os.path.exists(checkpoint_file(out, "origin_0/killed"))
        assert not os.path.exists(run_file(out, "killed.json"))
    return built_once("finished", build)


def snapshot(folder):
    return {p: (open(p, "rb").read(), os.stat(p).st_mtime_ns)
            for p in (os.path.join(r, f) for r, _, names in os.walk(folder) for f in names)}


def cli_outcome(argv, capsys):
    """(exit status, stderr) of tpv.main in this process: quicker than a subprocess per case."""
    try:
        tpv.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def write_bytes(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


def adapter(folder, config, rows=50):
    from safetensors.torch import save_file
    os.makedirs(folder, exist_ok=True)
    save_file({"prompt_embeddings": torch.zeros(rows, 32)}, os.path.join(folder, "adapter_model.safetensors"))
    write_bytes(os.path.join(folder, "adapter_config.json"), json.dumps(config).encode())


PEFT = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 50}


def pack_checkpoint(out, labels, path=None):
    """A checkpoint of a pack holding the runs `labels`, at its name (or at `path`)."""
    config = train.recipe("sst2", max_steps=4)
    state = train.TrainState.new(config, torch.zeros(len(labels), 50, 32), torch.device("cpu"))
    resume.save(state, path or checkpoint_file(out, *labels), config, labels, 2)


def ckpt(out):
    return checkpoint_file(out, "origin_0/killed")


# (case, command after "tpv.py", setup(out, tmp) before it, expected stderr fragment); {out}, {tmp}, {model} and
# {data} are filled in; every case must exit 2 with one line and leave every file under out as it was
BAD_INPUTS = [
    # lost work: a finished artefact is never replaced without --force
    ("add of one task", "add sst2", None, "add needs two or more different tasks"),
    ("add of a task twice", "add sst2 sst2", None, "add needs two or more different tasks"),
    ("import over a trained prompt", "import {tmp}/a --task sst2", lambda o, t: adapter(f"{t}/a", PEFT), "exists"),
    ("train a finished run", "train sst2", None, "this run is finished (pass --force"),
    ("a second writer of the same run", "train sst2 --name busy",
     lambda o, t: write_bytes(run_file(o, "busy.safetensors.lock"), str(os.getppid()).encode()), "is writing this run"),
    ("export over an adapter", "export sst2 --peft {tmp}/a", lambda o, t: adapter(f"{t}/a", PEFT), "pass --force"),
    ("tiny-model over a folder", "tiny-model {out}/origin_0 --spiece " + SPIECE, None, "which tiny-model does not write"),
    # flags
    ("NaN learning rate", "train sst2 --name x --lr nan", None, "--lr: must be a finite number"),
    ("huge learning rate", "train sst2 --name x --lr 1e300", None, "--lr: must be at most 10"),
    ("negative seed", "train sst2 --name x --seed -1", None, "--seed: must be at least 0"),
    ("huge seed", "train sst2 --name x --seed 99999999999", None, "--seed: must be below"),
    ("infinite weight decay", "train sst2 --name x --weight-decay inf", None, "must be a finite number"),
    ("prompt longer than an origin", "train sst2 --name x --prompt-len 6000", None, "more than an origin holds"),
    ("a path as --name", "train sst2 --name ../../escape", None, "must be a plain file name"),
    ("a hidden --name", "train sst2 --name .x", None, "must be a plain file name"),
    ("--out is a file", "train sst2 --out {tmp}/file", lambda o, t: write_bytes(f"{t}/file", b"x"),
     "cannot create the folder"),
    ("origins that do not parse", "cross-origin sst2 --origins 0,x", None, "use origins 0..9"),
    ("a reversed origin range", "similarity --origins 5-2", None, "use origins 0..9"),
    ("origin 10", "eval sst2 --prompt sst2 --origin 10", None, "invalid choice"),
    ("train --origins that do not parse", "train sst2 --origins 0-x", None, "use origins 0..9"),
    ("train --origins out of range", "train sst2 --origins 8-12", None, "use origins 0..9"),
    ("--origin and --origins", "train sst2 --origin 1 --origins 0-2", None, "give one of them"),
    ("--name for several runs", "train sst2 --origins 0-2 --name x", None, "--name names one run"),
    ("the same init twice", "train sst2 --origins 0-1 --init rte --init rte", None, "give each init once"),
    ("an origin-free init on several origins", "train sst2 --origins 0-1 --init random", None,
     "does not depend on the origin"),
    ("--pack 0", "train sst2 --origins 0-1 --pack 0", None, "--pack: must be at least 1"),
    ("a Llama option on T5", "train sst2 --name x --loss answer", None,
     "--loss is for Llama (Llama 3, DeepSeek-LLM) models, and this is a T5 model; drop the flag"),
    ("another Llama option on T5", "train sst2 --name x --checkpointing", None, "--checkpointing is for Llama"),
    ("fp16, removed", "train sst2 --name x --precision fp16", None, "use bf16, the precision T5 was trained in, or fp32"),
    ("an unreadable checkpoint of the older layout", "train sst2 --name old --resume",
     lambda o, t: write_bytes(run_file(o, "old.ckpt.safetensors"), b"\x00" * 10), "not a readable tpv checkpoint"),
    ("an older checkpoint beside the pack's own", "train sst2 --name killed --resume",
     lambda o, t: shutil.copyfile(ckpt(o), run_file(o, "killed.ckpt.safetensors")), "keep one of them"),
    ("--force over a pack holding other runs", "train sst2 --name packed --force",
     lambda o, t: pack_checkpoint(o, ["origin_0/packed", "origin_1/packed"]),
     "holds runs this command does not train (origin_1/packed)"),
    ("a run held by another pack", "train sst2 --origin 1 --name packed",
     lambda o, t: pack_checkpoint(o, ["origin_0/packed", "origin_1/packed"]),
     "is the checkpoint of a pack of 2 runs holding origin_1/packed"),
    ("export of a prompt of a family tpv lacks", "export {tmp}/gpt2.safetensors --peft {tmp}/adapter",
     lambda o, t: prompts.save_prompt(f"{t}/gpt2.safetensors", torch.zeros(50, 32), torch.zeros(50, 32),
                                      {"family": "gpt2"}), "tpv exports the prompts of its families"),
    ("prompts of two lengths", "eval sst2 --prompt sst2 --prompt {tmp}/short.safetensors",
     lambda o, t: prompts.save_prompt(f"{t}/short.safetensors", torch.zeros(10, 32), torch.zeros(10, 32), {}),
     "the prompts have different lengths (10 and 50 vectors)"),
    ("resume with another --pack", "train sst2 --name killed --resume --max-steps 4 --eval-every 2 --warmup 1 "
     "--batch-size 16 --pack 2", None, "--resume with different arguments: pack was 1, now 2"),
    ("NaN lambda", "add sst2 rte --lambda nan", None, "--lambda nan is out of range"),
    ("download-data offline", "download-data trec --offline --data-dir {tmp}/d", None, "forbids downloading"),
    # resume
    ("truncated checkpoint", "train sst2 --name killed --resume",
     lambda o, t: write_bytes(ckpt(o), open(ckpt(o), "rb").read()[:300]), "not a readable tpv checkpoint"),
    ("checkpoint without its state", "train sst2 --name killed --resume",
     lambda o, t: prompts.save_prompt(ckpt(o), torch.zeros(50, 32), torch.zeros(50, 32), {}),
     "not a readable tpv checkpoint"),
    ("resume from another data folder", "train sst2 --name killed --resume --max-steps 4 --eval-every 2 --warmup 1 "
     "--batch-size 16 --data-dir {tmp}/other", None,
     "--resume with different arguments: data_dir"),
    # prompt and adapter files
    ("NaN official prompt", "import {tmp}/nan.bin --task n",
     lambda o, t: torch.save(torch.full((100, 32), float("nan")), f"{t}/nan.bin"), "NaN or infinite"),
    ("adapter config that is a list", "import {tmp}/a --task n", lambda o, t: adapter(f"{t}/a", [PEFT]),
     "not PEFT prompt tuning"),
    ("num_virtual_tokens as a string", "import {tmp}/a --task n",
     lambda o, t: adapter(f"{t}/a", {**PEFT, "num_virtual_tokens": "50"}), "must be a positive integer"),
    ("negative num_virtual_tokens", "import {tmp}/a --task n",
     lambda o, t: adapter(f"{t}/a", {**PEFT, "num_virtual_tokens": -5}), "must be a positive integer"),
    ("truncated run record", "report --results {tmp}/r",
     lambda o, t: write_bytes(run_file(o, "rte.json"), open(run_file(o, "rte.json"), "rb").read()[:40]),
     "not a readable tpv record"),
    ("truncated results table", "cross-origin sst2 --results {tmp}/r",
     lambda o, t: write_bytes(f"{t}/r/cross_origin.json", b'{"sst2": {"orig'), "not a readable tpv record"),
    ("an integer prompt file", "eval sst2 --prompt {tmp}/int.safetensors",
     lambda o, t: __import__("safetensors.torch").torch.save_file(
         {"prompt": torch.zeros(50, 32, dtype=torch.int64), "init": torch.zeros(50, 32, dtype=torch.int64)},
         f"{t}/int.safetensors"), "must be float tensors"),
]


@needs_shared
@pytest.mark.parametrize("case, command, setup, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_are_one_line_and_change_no_file(finished, tiny, tmp_path, capsys, case, command, setup, message):
    out = tmp_path / "runs"
    shutil.copytree(finished, out)
    if setup:
        setup(str(out), str(tmp_path))
    before = snapshot(out)
    argv = command.format(tmp=tmp_path, model=tiny / "model", out=out / "model").split()
    common = {"tiny-model": [], "download-data": ["--model", str(tiny / "model")]}.get(
        argv[0], ["--model", str(tiny / "model"), "--out", str(out), "--data-dir", str(tiny / "data")])
    code, err = cli_outcome(argv[:1] + common + argv[1:], capsys)  # the case's own options come last and win
    assert code == 2 and message in err and err.count("\n") == 1, (case, code, err)
    assert snapshot(out) == before, case


@needs_shared
def test_better_outcomes_of_odd_inputs(finished, tiny, tmp_path, capsys):
    out = tmp_path / "runs"
    shutil.copytree(finished, out)
    common = ["--out", str(out), "--data-dir", str(tiny / "data")]
    # a run killed during its final evaluation is finished by --resume, with the prompt it had selected
    assert cli_outcome(["train", "sst2", "--name", "killed", "--resume", "--model", str(tiny / "model"), *common,
                        "--max-steps", "4", "--eval-every", "2", "--warmup", "1", "--batch-size", "16"], capsys)[0] == 0
    record = json.load(open(run_file(out, "killed.json")))
    assert "sst2" in record["test"] and not os.path.exists(checkpoint_file(out, "origin_0/killed"))
    # --model DIR/ is the model DIR: its prompts are found and fit
    code, err = cli_outcome(["eval", "sst2", "--prompt", "sst2", "--model", str(tiny / "model") + "/", *common],
                            capsys)
    assert code == 0, err
    # Ctrl-C during the first validation, before any record of one: --resume validates and goes on
    real, calls = evaluation.validation_losses, []
    def interrupt_first(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*a, **k)
    evaluation.validation_losses = interrupt_first
    try:
        first = ["train", "sst2", "--name", "early", "--model", str(tiny / "model"), *common, "--max-steps", "4",
                 "--eval-every", "2", "--warmup", "1"]
        assert cli_outcome(first, capsys)[0] == 2 and os.path.exists(checkpoint_file(out, "origin_0/early"))
        code, err = cli_outcome(first + ["--resume"], capsys)
        assert code == 0 and len(json.load(open(run_file(out, "early.json")))["history"]) == 2, err
    finally:
        evaluation.validation_losses = real
    # an unreadable checkpoint of another pack does not stop this one (the command that resumes it reports it)
    write_bytes(os.path.join(out, "model", "packs", "cola-0123456789ab.ckpt.safetensors"), b"garbage")
    assert cli_outcome(["train", "sst2", "--name", "despite", "--shots", "0", "--model", str(tiny / "model"),
                        *common], capsys)[0] == 0
    # the lock of a writer that died is taken over
    write_bytes(run_file(out, "again.safetensors.lock"), b"999999999")
    assert cli_outcome(["train", "sst2", "--name", "again", "--shots", "0", "--model", str(tiny / "model"),
                        *common], capsys)[0] == 0
    assert not os.path.exists(run_file(out, "again.safetensors.lock"))


@needs_shared
def test_run_sh_quick_end_to_end_and_restartable(tmp_path):
    """run.sh --quick runs the whole grid into a report with every section, and a second run.sh trains again only
    the pack that lost a run. The samples are thinned: what is checked is the grid and the report, not scores."""
    samples = tmp_path / "samples" / "data"  # run.sh --quick reads T5's vocabulary from samples/../assets
    for task in ("sst2", "cola", "rte"):
        thinned_sample(task, samples, 40)
    os.symlink(os.path.join(SHARED, "assets"), tmp_path / "samples" / "assets")
    # two source tasks: every section of the report, with one pair to add where --quick's three tasks have three
    options = ["--quick", "--tasks", "sst2,cola", "--out", str(tmp_path / "runs"),
               "--results", str(tmp_path / "results"), "--data-dir", str(tmp_path / "data"), "--samples", str(samples),
               "--jobs", "2"]
    env = {**os.environ, "PYTHON": sys.executable}
    first = subprocess.run(["bash", os.path.join(HERE, "run.sh"), *options], capture_output=True, text=True,
                           env=env, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = open(tmp_path / "results" / "README.md").read()
    for heading in ("Single-task prompt tuning", "Zero-shot addition", "Cross-origin", "Cosine similarity",
                    "Few-shot transfer"):
        assert heading in report, heading
    for init in ("random origin", "sst2", "cola", "sst2,cola", "sst2+cola"):
        assert f"| {init} |" in report  # every initialisation of the few-shot table
    ET.parse(tmp_path / "results" / "fewshot_rte.svg")
    launched = lambda process: re.findall(r"^\[\d+/\d+\] .* tpv\.py (train .*|add .*)$", process.stdout, re.M)
    # packs: sst2, cola, sst2,cola and rte per shot count (each on both origins, rte from all five inits)
    assert sorted(c.split(" --")[0] for c in launched(first) if c.startswith("train")) == [
        "train cola", "train rte", "train rte", "train sst2", "train sst2,cola"]
    # restart: finished packs are skipped; a pack missing one run runs again and trains that run alone
    origin_1 = tmp_path / "runs" / "tiny-t5" / "origin_1"
    records = lambda: {p: os.stat(p).st_mtime_ns for p in origin_1.parent.glob("origin_*/rte_5shots*.json")
                       if p != origin_1 / "rte_5shots_init-sst2+cola.json"}
    kept = records()
    for suffix in (".json", ".safetensors"):
        os.remove(origin_1 / f"rte_5shots_init-sst2+cola{suffix}")
    again = subprocess.run(["bash", os.path.join(HERE, "run.sh"), *options], capture_output=True, text=True,
                           env=env, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert [c.split(" --origins")[0] for c in launched(again)] == [
        "train rte --shots 5 --init origin --init sst2 --init cola --init sst2,cola --init sst2+cola"]
    assert (origin_1 / "rte_5shots_init-sst2+cola.json").exists()
    assert len(kept) == 9 and records() == kept  # the other runs of the pack were skipped, not trained again


# -----------------------------------------------------------------------------
# benchmarks: the README's commands run (on a tiny shape) and compare like with like


@needs_shared
def test_bench_step_eval_and_epoch_run_every_variant(capsys):
    """The README's bench.py step, eval and epoch on the tiny shape, in this process (bench.main: the tables are
    the point; an error raises here): every variant has its row, and they do the same work."""
    import bench

    def run_bench(*args):
        bench.main([*args, "--shape", "tiny"])
        return capsys.readouterr().out
    step = run_bench("step", "--repeats", "1")
    rows = re.findall(r"^(ours|transformers|transformers \+ PEFT) +(\d+) +([\d.]+) ", step, re.M)
    assert [name for name, _, _ in rows] == ["ours", "transformers", "transformers + PEFT"], step
    assert all(decoder == "3" for _, decoder, _ in rows)  # the same work: no variant runs a decoder prompt
    evaluation = run_bench("eval", "--batch", "4", "--src", "16", "--repeats", "1")
    assert len(re.findall(r"^(greedy|rank|PEFT generate) .*, (fp32|bf16) +[\d.]+ +[\d.]+$", evaluation,
                          re.M)) == 6, evaluation
    epoch = run_bench("epoch", "--tasks", "mnli", "--samples", os.path.join(SHARED, "data"), "--tokenizer", SPIECE)
    assert re.search(r"^mnli +51( +[\d.]+x?){8}$", epoch, re.M), epoch


# -----------------------------------------------------------------------------
# CUDA: skipped without a GPU; .ci/gpu runs them on a lent GPU machine (README, "On a GPU")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (.ci/gpu runs these)")


@needs_cuda
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-autocast"])
def test_cuda_logits_and_prompt_gradient_match_hugging_face(checkpoints, family, precision):
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    ours = model_t5.load_t5(checkpoints[family], device="cuda", dtype=dtype)
    hf = load_hf(checkpoints[family], dtype).cuda()
    ids, mask, labels = (t.cuda() for t in batch())
    dec = model_t5.shift_right(labels)
    prompt = torch.nn.Parameter(torch.randn(5, 32, device="cuda"))
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16-autocast")
    with autocast:
        got = ours(ids, dec, mask, prompt=prompt)
        embeds = torch.cat([prompt.expand(3, -1, -1).to(dtype), hf.shared(ids)], dim=1)
        expected = hf(inputs_embeds=embeds, attention_mask=torch.cat([mask.new_ones(3, 5), mask], 1),
                      decoder_input_ids=dec).logits
    assert rel_diff(got, expected) < (1e-5 if precision == "fp32" else 2e-2), precision
    mine, = torch.autograd.grad(got.float().sum(), prompt)
    theirs, = torch.autograd.grad(expected.float().sum(), prompt)
    assert rel_diff(mine, theirs) < (1e-4 if precision == "fp32" else 5e-2)


@needs_cuda
def test_cuda_training_bf16_packed_equal_alone_and_resume(tiny, tmp_path, capsys):
    # bf16 autocast (the default on CUDA) trains fp32 prompts
    assert packed_run(tiny, tmp_path / "bf16", "--origins", "0,1", "--device", "cuda", "--dropout", "0.1") == 0
    assert ", bf16, cuda" in capsys.readouterr().out
    prompt, init, _ = prompts.load_prompt(os.path.join(tmp_path, "bf16", "model", "origin_1", "sst2.safetensors"))
    assert prompt.dtype == torch.float32 and torch.isfinite(prompt).all() and not torch.equal(prompt, init)
    # packed equals alone on the GPU too (fp32, no dropout)
    assert packed_run(tiny, tmp_path / "packed", "--origins", "0,3", "--device", "cuda", "--precision", "fp32") == 0
    assert packed_run(tiny, tmp_path / "alone", "--origin", "3", "--device", "cuda", "--precision", "fp32") == 0
    torch.testing.assert_close(prompt_and_history(tmp_path / "packed", 3)[0],
                               prompt_and_history(tmp_path / "alone", 3)[0], rtol=1e-5, atol=1e-6)
    # a pack killed at a checkpoint and resumed ends where the uninterrupted pack ends (dropout on, bf16)
    pack = ["--origins", "0,1", "--max-steps", "120", "--scoring", "rank", "--device", "cuda"]
    reference = run_cli(*train_args(tiny, tmp_path / "a", *pack))
    assert reference.returncode == 0, reference.stderr
    code, _ = interrupt_then_resume(tiny, tmp_path / "b", signal.SIGKILL, *pack)
    assert code == -signal.SIGKILL
    for origin in (0, 1):
        a, b = prompt_and_history(tmp_path / "a", origin)[0], prompt_and_history(tmp_path / "b", origin)[0]
        print(f"origin {origin}: resumed prompt bit-identical: {torch.equal(a, b)}, max diff "
              f"{(a - b).abs().max().item():.3g}")
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("shape, runs, batch_size, source, target", [
    ("t5-small", 1, 32, 306, 4), ("t5-small", 10, 2, 150, 4), ("t5-small", 50, 2, 150, 4),
    ("t5-base", 4, 32, 306, 4), ("t5-base", 10, 32, 150, 4)])  # the last two: the grid's source packs
def test_cuda_activation_estimate_bounds_the_measured_memory(shape, runs, batch_size, source, target):
    """train.activation_bytes (which sizes the default --pack) against what a packed bf16 step really takes, with
    the weights in bf16 as tpv.py trains on CUDA: an estimate that is never below the truth and at most 2x above it
    (an H100 measured 1.35-1.45x)."""
    import bench
    torch.manual_seed(0)
    cfg = model_t5.T5Config(**bench.SHAPES[shape])
    if model_t5.activation_bytes(cfg, runs * batch_size, source, target, torch.bfloat16) > \
            devices.memory_budget(torch.device("cuda")):
        pytest.skip(f"this GPU has too little free memory for {shape} x {runs * batch_size} rows")
    model = bench.random_t5(cfg, torch.device("cuda"), "bf16")
    ids = torch.randint(3, 32000, (batch_size, source - 50), device="cuda")
    batch_ = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "labels": torch.randint(3, 32000, (batch_size, target), device="cuda")}
    prompts_ = torch.nn.Parameter(torch.randn(runs, 50, cfg.d_model, device="cuda"))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.autocast("cuda", torch.bfloat16):
        losses = model_t5.run_losses(model, prompts_, batch_)
    losses.sum().backward()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - before
    estimate = model_t5.activation_bytes(model.config, runs * batch_size, source, target, torch.bfloat16)
    print(f"runs {runs} x batch {batch_size}, {source}+{target} tokens: measured {measured / 2**20:,.0f} MiB, "
          f"estimated {estimate / 2**20:,.0f} MiB ({estimate / measured:.2f}x)")
    assert measured <= estimate <= 2 * measured
