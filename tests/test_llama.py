"""
Tests of the decoder-only family (model_llama.py). Run: python -m pytest -q tests/test_llama.py

transformers' `LlamaForCausalLM` (a test-only dependency) is the numerical oracle: tiny random checkpoints of the
three config families the paper and users meet are written with `save_pretrained` and compared with ours.
"""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from support import layers, weights
import model_llama

VOCAB = 300
ROPE_LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}  # 16: short sequences reach all three frequency bands
FAMILIES = {
    # Llama-3.1-8B-Instruct: grouped-query attention, llama3 rope scaling, untied head, a list of EOS ids
    "llama-3.1": dict(num_key_value_heads=2, rope_theta=500000.0, rope_scaling=ROPE_LLAMA3, eos_token_id=[2, 3],
                      rms_norm_eps=1e-5),
    # DeepSeek-LLM-7B-Chat: the Llama architecture with multi-head attention and rope theta 10000
    "deepseek-llm": dict(num_key_value_heads=4, rope_theta=10000.0, eos_token_id=2),
    # Llama-3.2-1B: tied head, head_dim set apart from hidden_size / heads
    "llama-3.2": dict(num_key_value_heads=2, head_dim=32, tie_word_embeddings=True, eos_token_id=2,
                      rope_theta=500000.0, rope_scaling={**ROPE_LLAMA3, "factor": 32.0}),
}


def hf_config(family):
    from transformers import LlamaConfig
    kw = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              bos_token_id=1, max_position_embeddings=256, attn_implementation="eager")
    return LlamaConfig(**{**kw, **FAMILIES[family]})


@pytest.fixture(scope="session")
def llamas(tmp_path_factory):
    """family -> folder of a tiny random checkpoint written by transformers' save_pretrained."""
    from transformers import LlamaForCausalLM
    folders = {}
    for i, family in enumerate(FAMILIES):
        torch.manual_seed(i)
        hf = LlamaForCausalLM(hf_config(family))
        with torch.no_grad():  # random norm scales, so that a wrong norm cannot hide behind ones
            for name, p in hf.named_parameters():
                if "norm" in name:
                    p.uniform_(0.5, 1.5)
        folders[family] = str(tmp_path_factory.mktemp(family.replace(".", "_")))
        hf.save_pretrained(folders[family])
    return folders


def load_hf(folder, dtype=torch.float32, attention="eager"):
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attention).eval()


def batch(seed=0, B=3, T=24, left=False):
    """ids and a mask with two shorter rows, padded on the right (training) or on the left (generation)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (B, T), generator=g)
    mask = torch.ones_like(ids)
    for row, length in ((1, T - 7), (2, T // 3)):
        if left:
            mask[row, :T - length] = 0
        else:
            mask[row, length:] = 0
    return ids, mask


def rel_diff(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def hf_logits_with_prompt(hf, ids, mask, prompt):
    """What PEFT prompt tuning computes: the prompt before the embedded ids, the mask extended with ones; the
    positions counted from the mask (what our model and transformers' generate use)."""
    B, n = ids.shape[0], prompt.shape[-2]
    embedded = hf.model.embed_tokens(ids)  # (B, S, d) in the model's dtype; PEFT casts the prompt to it
    embeds = torch.cat([prompt.expand(B, -1, -1).to(embedded.dtype), embedded], dim=1)
    full = torch.cat([mask.new_ones(B, n), mask], dim=1)
    positions = (full.cumsum(-1) - 1).masked_fill(full == 0, 1)
    return hf(inputs_embeds=embeds, attention_mask=full, position_ids=positions).logits[:, n:]


# -----------------------------------------------------------------------------
# the model against transformers

@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_keys_equal_hugging_face(llamas, family):
    ours, hf = model_llama.load_llama(llamas[family]), load_hf(llamas[family])
    assert list(ours.state_dict()) == list(hf.state_dict())
    for name, tensor in hf.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == ours.config.tie_word_embeddings


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_logits_match_hugging_face_fp32(llamas, family, attention):
    ours, hf = model_llama.load_llama(llamas[family]), load_hf(llamas[family], attention=attention)
    ids, mask = batch()
    real = mask.bool()  # positions after a row's end are padding: neither model's output there is used
    expected = hf(input_ids=ids, attention_mask=mask).logits
    assert rel_diff(ours(ids, mask)[real], expected[real]) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_and_prompt_match_hugging_face(llamas, family):
    ours, hf = model_llama.load_llama(llamas[family]), load_hf(llamas[family])
    ids, mask = batch(left=True)
    prompt = torch.randn(5, 64) * 0.1
    real = mask.bool()
    with torch.no_grad():
        expected = hf_logits_with_prompt(hf, ids, mask, prompt)
    assert rel_diff(ours(ids, mask, prompt)[real], expected[real]) < 1e-5
    # a left-padded row equals the same row alone: positions come from the mask
    alone = ours(ids[2:3, mask[2].bool()], None, prompt)
    assert rel_diff(ours(ids, mask, prompt)[2, mask[2].bool()], alone[0]) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_and_prompt_gradient_match_hugging_face(llamas, family):
    ours, hf = model_llama.load_llama(llamas[family]), load_hf(llamas[family])
    ids, mask = batch(seed=1)
    labels = ids.masked_fill(mask == 0, -100)
    init = torch.randn(6, 64) * 0.5
    losses, grads = [], []
    for logits_of in (lambda p: ours(ids, mask, p), lambda p: hf_logits_with_prompt(hf, ids, mask, p)):
        prompt = init.clone().requires_grad_(True)
        logits = logits_of(prompt)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        losses.append(loss.detach())
        grads.append(prompt.grad)
    assert rel_diff(losses[0], losses[1]) < 1e-5
    assert rel_diff(grads[0], grads[1]) < 1e-4


def test_checkpointing_gives_the_same_gradient(llamas):
    model = model_llama.load_llama(llamas["llama-3.1"]).train()
    ids, mask = batch(seed=2)
    grads = []
    for recompute in (False, True):
        model.checkpointing = recompute
        prompt = torch.full((4, 64), 0.1, requires_grad=True)
        model(ids, mask, prompt).logsumexp(-1).sum().backward()
        grads.append(prompt.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_decoding_equals_generate_with_left_padding(llamas, family):
    ours, hf = model_llama.load_llama(llamas[family]), load_hf(llamas[family])
    ids, mask = batch(seed=3, T=12, left=True)
    # make row 0 stop at once: its first greedy token becomes an end token (besides the config's)
    with torch.no_grad():
        first = ours(ids[:1])[0, -1].argmax().item()
    eos = ours.config.eos_token_id = ours.config.eos_token_id + [first]
    ours_out = model_llama.generate_greedy(ours, ids, mask, max_new_tokens=10)
    theirs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                         eos_token_id=eos, pad_token_id=eos[0])[:, ids.shape[1]:]
    assert ours_out[0, 0].item() == first
    assert torch.equal(ours_out, theirs[:, :ours_out.shape[1]])
    assert (theirs[:, ours_out.shape[1]:] == eos[0]).all()  # transformers only went on padding
    assert (ours_out[0, 1:] == eos[0]).all()  # a finished row is padded


def test_generation_with_prompt_equals_each_row_alone(llamas):
    model = model_llama.load_llama(llamas["llama-3.1"])
    ids, mask = batch(seed=4, T=10, left=True)
    prompt = torch.randn(3, 64)
    together = model_llama.generate_greedy(model, ids, mask, prompt, max_new_tokens=6)
    for row in range(3):
        alone = model_llama.generate_greedy(model, ids[row:row + 1, mask[row].bool()], None, prompt, 6)
        assert torch.equal(together[row, :alone.shape[1]], alone[0])


def test_candidate_scores_equal_full_forward_passes(llamas):
    model = model_llama.load_llama(llamas["deepseek-llm"])
    ids, mask = batch(seed=5, T=10, left=True)
    prompt = torch.randn(4, 64)
    candidates = [[5, 7], [9], [11, 12, 13]]
    scores = model_llama.score_candidates(model, ids, mask, prompt, candidates)
    for j, c in enumerate(candidates):
        full = torch.cat([ids, torch.tensor(c).expand(3, -1)], dim=1)
        full_mask = torch.cat([mask, torch.ones(3, len(c), dtype=mask.dtype)], dim=1)
        logp = model(full, full_mask, prompt).float().log_softmax(-1)
        expected = sum(logp[:, ids.shape[1] - 1 + i, t] for i, t in enumerate(c))
        assert torch.allclose(scores[:, j], expected, atol=1e-4), j


# -----------------------------------------------------------------------------
# the shared prefix: the start every row has in common, computed once per prompt

def chat_tokens(seed=7, start=9, lengths=(5, 8, 3, 6), answer=2):
    """Token arrays (data.tokenize's layout) of examples that begin with the same `start` ids, as a chat's
    examples do (begin-of-text, system message, instruction), then ids of their own and an answer."""
    import numpy as np
    g = torch.Generator().manual_seed(seed)
    common = torch.randint(4, VOCAB, (start,), generator=g).tolist()
    sources = [common + torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in lengths]
    targets = [torch.randint(4, VOCAB, (answer,), generator=g).tolist() for _ in lengths]
    flat = lambda seqs: (np.array([t for s in seqs for t in s], dtype=np.int32),
                         np.cumsum([0] + [len(s) for s in seqs], dtype=np.int64))
    (src, src_off), (tgt, tgt_off) = flat(sources), flat(targets)
    return {"source": src, "source_offsets": src_off, "target": tgt, "target_offsets": tgt_off}


def test_collate_finds_the_shared_start():
    import data
    tokens = chat_tokens(start=9, lengths=(5, 8, 3, 6))
    full = data.collate_causal(tokens, [0, 1, 2, 3], pad_id=0, loss="full", tail=1)
    assert full["shared_ids"].tolist() == full["input_ids"][0, :9].tolist()  # the common start, no further
    assert (full["input_ids"][:, :9] == full["input_ids"][:1, :9]).all()
    answer = data.collate_causal(tokens, [0, 1], pad_id=0, loss="answer", tail=1)
    assert answer["shared_ids"].numel() == 9 and (answer["labels"][:, :9] == -100).all()
    # a row that is the others' start leaves itself one token of its own; rows with other labels share nothing
    assert data.shared_start([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert data.shared_start([[1, 2, 3], [1, 2, 3]], [[1, 2, 3], [-100, 2, 3]]) == 0
    prefixes = data.collate_prefixes(tokens, [0, 1, 2], pad_id=0)
    ids, mask = prefixes["input_ids"], prefixes["attention_mask"]  # [shared][pads][own]: each row's real tokens
    for b, i in enumerate([0, 1, 2]):
        row = tokens["source"][tokens["source_offsets"][i]:tokens["source_offsets"][i + 1]].tolist()
        assert ids[b][mask[b].bool()].tolist() == row and mask[b, :9].all()
    assert prefixes["shared_ids"].numel() == 9


def peft_row_loss(hf, ids, labels, prompt):
    """PEFT's loss of one unpadded row with one prompt (n, d): the logits of [prompt; ids], token t predicted from
    the position before it (the first from the prompt's last vector), summed over the labels."""
    n = prompt.shape[0]
    embeds = torch.cat([prompt, hf.model.embed_tokens(ids)])[None]  # (1, n+T, d)
    logits = hf(inputs_embeds=embeds, position_ids=torch.arange(n + len(ids))[None]).logits[0, n - 1:-1]  # (T, V)
    return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("loss", ["full", "answer"])
@pytest.mark.parametrize("n_prompts", [1, 3])
def test_shared_prefix_loss_and_gradient_equal_peft_row_by_row(llamas, loss, n_prompts):
    """run_losses computes the shared start once per prompt; PEFT computes every row alone: the same loss and prompt
    gradient, packed (3 prompts) and alone, with right padding, for --loss full and answer."""
    import data
    ours, hf = model_llama.load_llama(llamas["llama-3.1"]), load_hf(llamas["llama-3.1"])
    batch_ = data.collate_causal(chat_tokens(), [0, 1, 2, 3], pad_id=0, loss=loss, tail=1)
    assert batch_["shared_ids"].numel() == 9
    init = torch.randn(n_prompts, 5, 64) * 0.5
    prompts = init.clone().requires_grad_(True)
    losses = model_llama.run_losses(ours, prompts, batch_)  # (R,)
    losses.sum().backward()
    ref = init.clone().requires_grad_(True)
    expected = torch.stack([sum(peft_row_loss(hf, ids[m.bool()], labels[m.bool()], ref[r])
                                for ids, m, labels in zip(batch_["input_ids"], batch_["attention_mask"],
                                                          batch_["labels"]))
                            for r in range(n_prompts)])
    expected.sum().backward()
    assert rel_diff(losses.detach(), expected.detach()) < 1e-5
    assert rel_diff(prompts.grad, ref.grad) < 1e-4


def test_shared_prefix_generation_and_scores_equal_each_row_alone(llamas):
    """Generation and rank scoring with the shared start once per prompt (collate_prefixes' [shared][pads][own]
    rows, 2 prompts packed) give each row's tokens and scores as that row alone with its prompt."""
    import data
    model = model_llama.load_llama(llamas["llama-3.1"])
    tokens = chat_tokens(seed=8, lengths=(4, 9, 2))
    batch_ = data.collate_prefixes(tokens, [0, 1, 2], pad_id=0)
    shared = batch_.pop("shared_ids").numel()
    rows = layers.rows_per_prompt(batch_, torch.zeros(2, 1, 1))[0]  # (6, S), prompt-major
    ids, mask = rows["input_ids"], rows["attention_mask"]
    prompts = torch.randn(2, 5, 64)
    out = model_llama.generate_greedy(model, ids, mask, prompts, 6, shared)
    candidates = [[5, 7], [9], [11, 12, 13]]
    scores = model_llama.score_candidates(model, ids, mask, prompts, candidates, shared)
    for row in range(6):
        alone_ids, prompt = ids[row:row + 1, mask[row].bool()], prompts[row // 3]
        alone = model_llama.generate_greedy(model, alone_ids, None, prompt, 6)
        assert torch.equal(out[row, :alone.shape[1]], alone[0])
        alone_scores = model_llama.score_candidates(model, alone_ids, None, prompt, candidates)
        assert rel_diff(scores[row], alone_scores[0]) < 1e-5
    # the model alone (no prompt): the shared start is computed once all the same
    ids, mask = batch_["input_ids"], batch_["attention_mask"]
    out = model_llama.generate_greedy(model, ids, mask, None, 6, shared)
    for row in range(3):
        alone = model_llama.generate_greedy(model, ids[row:row + 1, mask[row].bool()], None, None, 6)
        assert torch.equal(out[row, :alone.shape[1]], alone[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_has_the_same_argmax(llamas, family):
    ours = model_llama.load_llama(llamas[family], dtype=torch.bfloat16)
    hf = load_hf(llamas[family], dtype=torch.bfloat16, attention="sdpa")
    ids, mask = batch(seed=6)
    real = mask.bool()
    a, b = ours(ids, mask)[real].float(), hf(input_ids=ids, attention_mask=mask).logits[real].float()
    top2 = b.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.02 * b.abs().max()  # near-ties may flip under bf16 rounding
    assert clear.sum() > 0.5 * len(clear)
    assert torch.equal(a.argmax(-1)[clear], b.argmax(-1)[clear])


# -----------------------------------------------------------------------------
# loading

def test_sharded_checkpoint_loads(llamas, tmp_path):
    hf = load_hf(llamas["llama-3.1"])
    hf.save_pretrained(tmp_path, max_shard_size="50KB")
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 1
    ours = model_llama.load_llama(str(tmp_path))
    ids, mask = batch()
    real = mask.bool()
    assert rel_diff(ours(ids, mask)[real], hf(input_ids=ids, attention_mask=mask).logits[real]) < 1e-5


def test_saved_model_loads_in_transformers(llamas, tmp_path):
    ours = model_llama.load_llama(llamas["llama-3.2"])
    model_llama.save_llama(ours, str(tmp_path))
    hf = load_hf(str(tmp_path))
    ids, mask = batch()
    real = mask.bool()
    assert rel_diff(ours(ids, mask)[real], hf(input_ids=ids, attention_mask=mask).logits[real]) < 1e-5


def edited_config(folder, tmp_path, **changes):
    config = json.load(open(os.path.join(folder, "config.json")))
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    target = tmp_path / "model"
    target.mkdir()
    os.symlink(os.path.join(folder, "model.safetensors"), target / "model.safetensors")
    (target / "config.json").write_text(json.dumps(config))
    return str(target)


@pytest.mark.parametrize("changes, message", [
    (dict(num_key_value_heads=3), "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_type \"yarn\" is not implemented"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "needs positive numbers for low_freq_factor"),
    (dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
    (dict(rope_scaling={"rope_type": ["llama3"]}), "rope_type [\"llama3\"] is not implemented"),
    (dict(rope_scaling={**ROPE_LLAMA3, "high_freq_factor": 1.0}), "high_freq_factor must exceed its low_freq_factor"),
    (dict(eos_token_id=[]), "eos_token_id is [], expected a list of one or more token ids"),
    (dict(eos_token_id=[2, 999]), "eos_token_id is [2, 999], expected a list of one or more token ids in [0, 300)"),
    (dict(hidden_size=0), "hidden_size is 0, expected an integer > 0"),
    (dict(model_type="mistral"), "model_type is \"mistral\", but this loader implements Llama"),
    (dict(intermediate_size=97), "model.layers.0.mlp.gate_proj.weight has shape (96, 64), config.json implies (97, 64)"),
])
def test_bad_config_is_one_line_naming_the_problem(llamas, tmp_path, changes, message):
    folder = edited_config(llamas["llama-3.1"], tmp_path, **changes)
    with pytest.raises(weights.CheckpointError) as e:
        model_llama.load_llama(folder)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_tied_head_may_be_stored_twice_but_must_agree(llamas, tmp_path):
    from safetensors.torch import load_file, save_file
    tensors = load_file(os.path.join(llamas["llama-3.2"], "model.safetensors"))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    os.symlink(os.path.join(llamas["llama-3.2"], "config.json"), tmp_path / "config.json")
    model_llama.load_llama(str(tmp_path))
    tensors["lm_head.weight"] += 1
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(weights.CheckpointError, match="model.embed_tokens.weight differs from lm_head.weight"):
        model_llama.load_llama(str(tmp_path))


# -----------------------------------------------------------------------------
# the whole method through the command line, on a tiny random Llama with the real Llama 3 vocabulary

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root, above tests/
SHARED = os.path.join(HERE, "..", "shared")
LLAMA3 = os.path.join(SHARED, "assets", "llama3-tokenizer.json")


def trimmed_sample(name, target, rows=40):
    """The first rows of a GLUE sample's train.tsv and dev.tsv: small splits keep the CLI tests quick."""
    os.makedirs(target)
    for file in ("train.tsv", "dev.tsv"):
        with open(os.path.join(SHARED, "data", name, file), encoding="utf-8") as f:
            lines = f.readlines()[:rows + 1]
        with open(os.path.join(target, file), "w", encoding="utf-8") as f:
            f.writelines(lines)
    return target


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """{model, data, out}: `tpv.py tiny-model --family llama` on Llama 3's vocabulary; RTE and CoLA prepared."""
    if not os.path.isfile(LLAMA3):
        pytest.skip("../shared (Llama 3 vocabulary, dataset samples) is not beside this checkout")
    import data
    import tpv
    root = tmp_path_factory.mktemp("tiny_llama")
    tpv.main(["tiny-model", str(root / "model"), "--family", "llama", "--tokenizer", LLAMA3])
    for name in ("rte", "cola"):
        data.prepare(data.get_task(name), trimmed_sample(name, str(root / "raw" / name)), str(root / "data"))
    return {"model": str(root / "model"), "data": str(root / "data"), "out": str(root / "runs")}


def run_cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, os.path.join(HERE, "tpv.py"), *args], capture_output=True, text=True,
                          cwd=HERE, timeout=300)


def where(tiny):
    return ["--model", tiny["model"], "--data-dir", tiny["data"], "--out", tiny["out"]]


def test_bench_shared_prefix_times_three_arms_on_the_same_work(tiny_llama, capsys):
    """bench.py shared-prefix on a tiny chat Llama: it checks that the three arms compute the same loss, gradient,
    tokens and scores before it times them, and prints each arm's time."""
    import bench
    bench.main(["shared-prefix", "--model", tiny_llama["model"], "--samples", os.path.join(SHARED, "data"),
                "--batch", "2", "--prompt", "4", "--rows", "4", "--repeats", "1", "--loss", "full,answer"])
    out = capsys.readouterr().out
    for arm in ("shared prefix", "without it", "transformers + PEFT"):
        assert out.count(f"  {arm}") == 2  # --loss full and answer
        assert f"generate: {arm}" in out and f"rank: {arm}" in out


def test_demo_scores_the_untuned_and_the_tuned_prompt(tiny_llama, tmp_path):
    """./demo.sh on a tiny chat Llama and the SST-2 sample: both runs on the 872 test sentences, the second tuned
    from the first's origin with the demo's settings, and a two-line table; bad options are one line, exit 2."""
    import re
    import subprocess
    import sys
    demo = lambda *args: subprocess.run(["bash", os.path.join(HERE, "demo.sh"), *args], capture_output=True,
                                        text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=300)
    done = demo("--model", tiny_llama["model"], "--samples", os.path.join(SHARED, "data"), "--out",
                str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr
    table = re.findall(r"^  (untuned|tuned) +([\d.]+) %", done.stdout, re.M)
    assert [name for name, _ in table] == ["untuned", "tuned"] and "872 sentences" in done.stdout
    records = {name: json.load(open(tmp_path / "runs" / "model" / "origin_0" / f"{name}.json"))
               for name in ("untuned", "tuned")}
    assert {name: round(100 * r["test"]["sst2"]["accuracy"], 1) for name, r in records.items()} == {
        name: float(value) for name, value in table}
    tuned = records["tuned"]["arguments"]
    assert (tuned["shots"], tuned["lr"], tuned["loss"], records["tuned"]["steps"]) == (64, 0.03, "answer", 50)
    assert records["untuned"]["arguments"]["shots"] == 0
    assert demo("--help").stdout.splitlines()[-1].endswith("(--scoring rank).")  # the whole header, nothing else
    for args, message in ((["--samples", str(tmp_path / "nothing")], "no such folder"),
                          (["--lr", "1"], "unknown option --lr")):
        bad = demo(*args)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_readme_llama_example_runs(tiny_llama):
    import re
    import subprocess
    import sys
    readme = open(os.path.join(HERE, "README.md"), encoding="utf-8").read()
    example = re.findall(r"```python\n(.*?)```", readme, re.S)[1]  # the second: the decoder-only family
    example = example.replace("models/meta-llama/Llama-3.1-8B-Instruct", tiny_llama["model"])  # where download puts it
    result = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, cwd=HERE, timeout=120)
    assert result.returncode == 0, result.stderr


def test_tiny_model_and_info(tiny_llama):
    result = run_cli("info", "--model", tiny_llama["model"])
    assert result.returncode == 0, result.stderr
    assert "family     llama" in result.stdout and "2 key/value heads" in result.stdout
    import model_llama
    tokenizer = model_llama.load_tokenizer(tiny_llama["model"])
    assert tokenizer.chat_format == "llama3" and tokenizer.bos_id == 128000 and tokenizer.eos_id == 128009


@pytest.mark.usefixtures("cli_in_process")
def test_train_eval_add_export_through_the_cli(tiny_llama, tmp_path):
    import prompts
    for task in ("rte", "cola"):  # --loss answer and the default full loss
        loss = ["--loss", "answer"] if task == "rte" else []
        result = run_cli("train", task, *where(tiny_llama), "--max-steps", "3", "--eval-every", "2", "--batch-size",
                         "2", *loss)
        assert result.returncode == 0, result.stderr
        assert "validation loss" in result.stdout and "step      3/3" in result.stdout
    prompt, init, meta = prompts.load_prompt(os.path.join(tiny_llama["out"], "model", "origin_0", "rte.safetensors"))
    assert prompt.shape == (100, 32) and meta["family"] == "llama"  # 100 vectors: the LLM recipe
    record = json.load(open(os.path.join(tiny_llama["out"], "model", "origin_0", "rte.json")))
    assert record["arguments"]["schedule"] == "cosine" and record["arguments"]["loss"] == "answer"
    assert not torch.equal(prompt, init)

    result = run_cli("eval", "rte", *where(tiny_llama), "--prompt", "rte", "--prompt", "cola", "--scoring", "rank")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('"accuracy"') == 2 or result.stdout.count("accuracy") >= 2

    result = run_cli("add", "rte", "cola", *where(tiny_llama), "--lambda", "1")
    assert result.returncode == 0, result.stderr
    added, origin, _ = prompts.load_prompt(os.path.join(tiny_llama["out"], "model", "origin_0", "rte+cola.safetensors"))
    cola, _, _ = prompts.load_prompt(os.path.join(tiny_llama["out"], "model", "origin_0", "cola.safetensors"))
    assert torch.allclose(added, origin + (prompt - init) + (cola - origin), atol=1e-6)

    result = run_cli("export", "rte", *where(tiny_llama), "--peft", str(tmp_path / "adapter"))
    assert result.returncode == 0, result.stderr
    from peft import PeftModel
    from transformers import LlamaForCausalLM
    peft = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_llama["model"]), str(tmp_path / "adapter"))
    assert peft.peft_config["default"].task_type == "CAUSAL_LM"
    assert torch.equal(peft.prompt_encoder["default"].embedding.weight, prompt)
    # PEFT's prompt tuning computes what ours computes with that prompt
    import model_llama
    ours = model_llama.load_llama(tiny_llama["model"])
    ids = torch.tensor([[128000, 791, 4062, 374]])
    with torch.no_grad():
        theirs = peft(input_ids=ids).logits[:, -4:]
        assert rel_diff(ours(ids, prompt=prompt), theirs) < 1e-5

    result = run_cli("import", str(tmp_path / "adapter"), "--task", "rte_back", *where(tiny_llama))
    assert result.returncode == 0, result.stderr
    back, _, _ = prompts.load_prompt(os.path.join(tiny_llama["out"], "model", "origin_0", "rte_back.safetensors"))
    assert torch.equal(back, prompt)  # a causal-LM adapter keeps all its rows


def model_copy(tiny, tmp_path, name, config=None, tokenizer=None):
    """A copy of the tiny Llama's folder with config.json's keys changed, or another tokenizer.json."""
    import shutil
    folder = tmp_path / name
    shutil.copytree(tiny["model"], folder)
    if config:
        (folder / "config.json").write_text(json.dumps({**json.load(open(folder / "config.json")), **config}))
    if tokenizer:
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    return str(folder)


def test_download_of_a_gated_llama(tiny_llama, tmp_path, monkeypatch):
    from support import hub
    import families
    from test_tpv import FakeHub, checkpoint_files
    server = FakeHub({}, token="secret")
    server.add_repo("meta-llama/Tiny", checkpoint_files(tiny_llama["model"]))  # no spiece.model: Llama's files
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("TPV_OFFLINE", raising=False)
    models_dir = str(tmp_path / "models")
    try:
        with pytest.raises(hub.DownloadError, match="HTTP 401.*access token in HF_TOKEN"):
            hub.resolve_model("meta-llama/Tiny", models_dir)
        monkeypatch.setenv("HF_TOKEN", "secret")
        folder = hub.resolve_model("meta-llama/Tiny", models_dir)
    finally:
        server.shutdown()
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "tokenizer.json",
                                          "tokenizer_config.json"]
    assert families.load(folder).family == "llama" and families.load_tokenizer(folder).chat_format == "llama3"


@pytest.mark.usefixtures("cli_in_process")
def test_bad_inputs_of_the_llama_family_are_one_line(tiny_llama, tmp_path):
    import prompts
    t5_prompt = str(tmp_path / "t5.safetensors")
    prompts.save_prompt(t5_prompt, torch.zeros(50, 32), torch.zeros(50, 32), {"task": "rte", "model": "t5-base",
                                                                              "family": "t5"})
    gpt2 = model_copy(tiny_llama, tmp_path, "gpt2", config={"model_type": "gpt2"})
    gqa = model_copy(tiny_llama, tmp_path, "gqa", config={"num_key_value_heads": 3})
    yarn = model_copy(tiny_llama, tmp_path, "yarn", config={"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    unigram = model_copy(tiny_llama, tmp_path, "unigram", tokenizer={"model": {"type": "Unigram", "vocab": []}})
    unknown_chat = model_copy(tiny_llama, tmp_path, "unknown_chat")
    (tmp_path / "unknown_chat" / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    gguf = model_copy(tiny_llama, tmp_path, "gguf")  # the weights as llama.cpp ships them, no safetensors
    os.replace(os.path.join(gguf, "model.safetensors"), os.path.join(gguf, "model-q4_1.gguf"))
    only_gguf = tmp_path / "only_gguf"  # a GGUF repo: the .gguf files alone
    only_gguf.mkdir()
    (only_gguf / "x.gguf").write_bytes(b"GGUF")
    no_tokenizer = model_copy(tiny_llama, tmp_path, "no_tokenizer")
    os.remove(os.path.join(no_tokenizer, "tokenizer.json"))
    cases = [
        (["train", "rte", *where(tiny_llama)[2:], "--model", gguf], "model-q4_1.gguf: GGUF weights (llama.cpp's "
         "format) are not read by tpv"),
        (["info", "--model", os.path.join(gguf, "model-q4_1.gguf")], "GGUF weights (llama.cpp's format)"),
        (["info", "--model", str(only_gguf)], "x.gguf: GGUF weights (llama.cpp's format)"),  # no config.json either
        (["train", "rte", *where(tiny_llama)[2:], "--model", no_tokenizer], "no such tokenizer.json; download the "
         "model's tokenizer files"),
        (["eval", "rte", *where(tiny_llama), "--prompt", t5_prompt], "prompts do not carry over between model families"),
        (["info", "--model", gpt2], "model_type \"gpt2\" is a model family tpv does not implement"),
        (["info", "--model", gqa], "not a multiple of num_key_value_heads 3"),
        (["info", "--model", yarn], 'rope_scaling rope_type "yarn" is not implemented'),
        (["eval", "rte", "--model", unigram, "--data-dir", tiny_llama["data"], "--prompt", t5_prompt], "not BPE"),
        (["train", "rte", *where(tiny_llama)[2:], "--model", str(tmp_path / "none")], "no such model folder"),
        # a fresh --out: the module's runs may have trained rte already
        (["train", "rte", *where(tiny_llama)[:4], "--out", str(tmp_path / "runs"), "--dropout", "0.1"],
         "--dropout is for T5 models, and this is a Llama (Llama 3, DeepSeek-LLM) model; drop the flag"),
        (["train", "rte", *where(tiny_llama)[:4], "--out", str(tmp_path / "runs"), "--dropout", "0"],
         "--dropout is for T5 models"),  # 0 is given too
        (["train", "rte", *where(tiny_llama)[2:], "--model", unknown_chat], "an unknown chat_template; tpv writes "
         "tasks in the chat formats of Llama-3.1-Instruct, DeepSeek-LLM-Chat, SmolLM2-Instruct and Qwen2.5-Instruct"),
        (["train", "rte", *where(tiny_llama)[:4], "--out", str(tmp_path / "runs"), "--precision", "fp16"],
         "fp16 is not supported (T5 overflows in fp16): use bf16"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


def test_vectors_of_different_families_do_not_add():
    import prompts
    a = prompts.vector(torch.ones(4, 8), torch.zeros(4, 8), "m", "a", "t5")
    b = prompts.vector(torch.ones(4, 8), torch.zeros(4, 8), "m", "b", "llama")
    with pytest.raises(prompts.PromptError, match="different model families do not add"):
        prompts.add(a, b)


def test_packed_llama_runs_equal_the_runs_alone(tiny_llama, tmp_path):
    import prompts
    import tpv
    flags = ["--model", tiny_llama["model"], "--data-dir", tiny_llama["data"], "--max-steps", "3", "--eval-every",
             "2", "--batch-size", "2", "--loss", "answer"]
    tpv.main(["train", "rte", *flags, "--out", str(tmp_path / "packed"), "--origins", "0,1", "--pack", "2"])
    for origin in (0, 1):
        tpv.main(["train", "rte", *flags, "--out", str(tmp_path / "alone"), "--origin", str(origin)])
        packed, alone = (prompts.load_prompt(str(tmp_path / out / "model" / f"origin_{origin}" / "rte.safetensors"))[0]
                         for out in ("packed", "alone"))
        torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-6)


# -----------------------------------------------------------------------------
# CUDA (skipped without a GPU; .ci/gpu runs them)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (.ci/gpu runs these)")


@needs_cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_logits_and_prompt_gradient_match_hugging_face(llamas, family):
    ours = model_llama.load_llama(llamas[family], device="cuda")
    hf = load_hf(llamas[family], attention="sdpa").cuda()
    ids, mask = (t.cuda() for t in batch(left=True))
    prompt = (torch.randn(5, 64) * 0.1).cuda().requires_grad_(True)
    real = mask.bool()
    assert rel_diff(ours(ids, mask, prompt)[real], hf_logits_with_prompt(hf, ids, mask, prompt)[real]) < 1e-5
    ours16 = model_llama.load_llama(llamas[family], device="cuda", dtype=torch.bfloat16)
    hf16 = load_hf(llamas[family], dtype=torch.bfloat16, attention="sdpa").cuda()
    with torch.no_grad():
        a, b = ours16(ids, mask, prompt)[real].float(), hf_logits_with_prompt(hf16, ids, mask, prompt)[real].float()
    top2 = b.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.02 * b.abs().max()
    assert torch.equal(a.argmax(-1)[clear], b.argmax(-1)[clear])
    out = model_llama.generate_greedy(ours, ids, mask, prompt.detach(), 6)
    theirs = [model_llama.generate_greedy(ours, ids[r:r + 1, real[r]], None, prompt.detach(), 6)[0] for r in range(3)]
    assert all(torch.equal(out[r, :len(t)], t) for r, t in enumerate(theirs))


@needs_cuda
def test_cuda_shared_prefix_equals_every_row_with_its_own_prompt_copy():
    """On CUDA: run_losses with the shared start once per prompt (2 prompts packed) against every row computing its
    own copy of the prompt and its whole text (token_losses with R = B groups, nothing shared)."""
    import data
    torch.manual_seed(0)
    model = model_llama.Llama(model_llama.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                                                      num_hidden_layers=2, num_attention_heads=4,
                                                      num_key_value_heads=2)).cuda().eval()  # random weights
    batch_ = {k: v.cuda() for k, v in data.collate_causal(chat_tokens(), [0, 1, 2, 3], 0, "full", 1).items()}
    init = torch.randn(2, 5, 64, device="cuda") * 0.5
    shared, alone = init.clone().requires_grad_(True), init.clone().requires_grad_(True)
    losses = model_llama.run_losses(model, shared, batch_)
    losses.sum().backward()
    ids, mask, labels = batch_["input_ids"], batch_["attention_mask"], batch_["labels"]
    expected = torch.stack([model_llama.token_losses(model, ids, mask, labels, alone[r].expand(4, -1, -1)).sum()
                            for r in range(2)])
    expected.sum().backward()
    assert rel_diff(losses.detach(), expected.detach()) < 1e-5
    assert rel_diff(shared.grad, alone.grad) < 1e-4


@needs_cuda
def test_cuda_training_through_the_cli(tiny_llama, tmp_path):
    result = run_cli("train", "rte", *where(tiny_llama)[:4], "--out", str(tmp_path), "--device", "cuda",
                     "--max-steps", "3", "--eval-every", "2", "--batch-size", "2", "--checkpointing")
    assert result.returncode == 0, result.stderr
    assert "bf16" in result.stdout and "step      3/3" in result.stdout
