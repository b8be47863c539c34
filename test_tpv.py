"""
Tests for tpv. Run: python -m pytest -q test_tpv.py

Hugging Face `transformers` (a test-only dependency) is the numerical oracle: the tests build tiny random T5
checkpoints of each config family with `save_pretrained` and compare our model with `T5ForConditionalGeneration`.
Tests that read ../shared (the real dataset samples, the T5 vocabulary) skip when it is absent.
"""
import csv
import hashlib
import http.server
import io
import json
import os
import re
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

import hub
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
def checkpoints(tmp_path_factory):
    """family -> folder of a tiny random checkpoint written by transformers' save_pretrained."""
    from transformers import T5ForConditionalGeneration
    folders = {}
    for i, family in enumerate(FAMILIES):
        torch.manual_seed(i)
        hf = T5ForConditionalGeneration(hf_config(family))
        with torch.no_grad():  # random layer norm scales, so that a wrong norm cannot hide behind ones
            for name, p in hf.named_parameters():
                if "layer_norm" in name:
                    p.uniform_(0.5, 1.5)
        folders[family] = str(tmp_path_factory.mktemp(family.replace(".", "_")))
        hf.save_pretrained(folders[family])
    return folders


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
                 "decoder.embed_tokens.weight differs from shared.weight"):
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
    with pytest.raises(model_t5.CheckpointError, match="cannot read the model config"):
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
                          env={**os.environ, **(env or {})}, cwd=HERE, timeout=120)


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
def test_tokenizer_matches_hugging_face_on_every_shared_text(tmp_path):
    from transformers import T5Tokenizer
    (tmp_path / "spiece.model").write_bytes(open(SPIECE, "rb").read())
    hf = T5Tokenizer.from_pretrained(str(tmp_path), legacy=True)  # t5-base's tokenizer settings
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
    """Serves {repo: {file: bytes}} as /REPO/resolve/main/FILE with Range support and the hub's sha256 ETag.
    Per-file faults: 'cut' sends half then closes (once), 'corrupt' sends other bytes than the ETag promises."""

    def __init__(self, repos):
        self.repos, self.faults, self.requests = repos, {}, []
        super().__init__(("127.0.0.1", 0), FakeHubHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeHubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        hub_, match = self.server, re.fullmatch(r"/(.+)/resolve/main/(.+)", self.path)
        self.server.requests.append((self.path, self.headers.get("Range")))
        data = hub_.repos.get(match.group(1), {}).get(match.group(2)) if match else None
        if data is None:
            self.send_error(404)
            return
        fault = hub_.faults.get(match.group(2))
        body, start = data, 0
        if self.headers.get("Range"):
            start = int(re.match(r"bytes=(\d+)-", self.headers["Range"]).group(1))
            body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.end_headers()
        if fault == "cut":
            hub_.faults.pop(match.group(2))
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(bytes(len(body)) if fault == "corrupt" else body)


@pytest.fixture
def fake_hub(checkpoints, tmp_path, monkeypatch):
    files = {name: open(os.path.join(checkpoints["t5-v1.0"], name), "rb").read()
             for name in ("config.json", "model.safetensors")}
    files["spiece.model"] = b"not a real vocabulary"
    server = FakeHub({"google-t5/t5-small": files, "someone/tiny": dict(files)})
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
    size = len(fake_hub.repos["someone/tiny"]["model.safetensors"])
    assert 0 < os.path.getsize(part) < size
    assert not os.path.exists(os.path.join(models, "someone/tiny/config.json"))  # no half-finished model
    hub.download_model("someone/tiny", models, quiet=True)
    assert ("/someone/tiny/resolve/main/model.safetensors", f"bytes={size // 2}-") in fake_hub.requests
    with open(os.path.join(models, "someone/tiny/model.safetensors"), "rb") as f:
        assert f.read() == fake_hub.repos["someone/tiny"]["model.safetensors"]
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
    files = {n: open(tmp_path / "sharded" / n, "rb").read() for n in os.listdir(tmp_path / "sharded")}
    fake_hub.repos["someone/sharded"] = {**files, "spiece.model": b"x"}
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
