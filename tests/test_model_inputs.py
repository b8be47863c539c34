"""
Bad inputs that enter through a model folder (config.json, the weights, spiece.model) or a --model name end with
one CheckpointError line naming the file, what is wrong and how to fix it, and change no file.

    python -m pytest -q tests/test_model_inputs.py
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from support import weights
from support import hub
import model_t5

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root, above tests/
TINY = dict(vocab_size=300, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
POSITIVE_INTS = ["vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                 "relative_attention_num_buckets", "relative_attention_max_distance"]


def random_model(config=None, seed=0):
    torch.manual_seed(seed)
    return model_t5.T5(model_t5.T5Config(**(config or TINY)))


def write_checkpoint(folder, config=None, seed=0):
    """A tiny random T5 saved as Hugging Face does: config.json and model.safetensors (tied weights once)."""
    model = random_model(config, seed)
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.named_parameters()}, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "t5", **model.config.to_dict()}, f)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_checkpoint(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture
def folder(tiny, tmp_path):
    """A fresh copy of the tiny checkpoint for a case to break."""
    return shutil.copytree(tiny, str(tmp_path / "model"))


def snapshot(root):
    """Every file and folder under root with its bytes: what a failed load must leave as it was."""
    found = {}
    for path, dirs, files in os.walk(root):
        found.update({os.path.join(path, d): "folder" for d in dirs})
        for name in files:
            with open(os.path.join(path, name), "rb") as f:
                found[os.path.join(path, name)] = f.read()
    return found


# -----------------------------------------------------------------------------
# a case's setup changes the copied folder; it returns the path to load when that is not the folder itself

def edit(**changes):
    def setup(folder):
        path = os.path.join(folder, "config.json")
        with open(path) as f:
            config = json.load(f)
        with open(path, "w") as f:
            json.dump({**config, **changes}, f)  # NaN and Infinity are written as Python's json reads them
    return setup


def write(name, data):
    def setup(folder):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return setup


def remove(name):
    return lambda folder: os.remove(os.path.join(folder, name))


def make_folder(name):
    def setup(folder):
        os.remove(os.path.join(folder, name))
        os.mkdir(os.path.join(folder, name))
    return setup


def wider_weights(folder):
    config = {**TINY, "d_model": 24}
    write_checkpoint(folder + "-wide", config)
    shutil.copy(os.path.join(folder + "-wide", "model.safetensors"), folder)


REMEDY = "correct it there, or download the model again"
CASES = [
    # config values of the wrong type or out of range
    ("d_model string", edit(d_model="32"), f'config.json: d_model is "32", expected an integer > 0; {REMEDY}'),
    ("d_model negative", edit(d_model=-32), "d_model is -32, expected an integer > 0"),
    ("d_model float", edit(d_model=32.0), "d_model is 32.0, expected an integer > 0"),
    ("d_model null", edit(d_model=None), "d_model is null, expected an integer > 0"),
    ("d_model bool", edit(d_model=True), "d_model is true, expected an integer > 0"),
    *[(f"{key} zero", edit(**{key: 0}), f"{key} is 0, expected an integer > 0") for key in POSITIVE_INTS],
    ("num_layers negative", edit(num_layers=-1), "num_layers is -1, expected an integer > 0"),
    ("num_decoder_layers string", edit(num_decoder_layers="2"), 'num_decoder_layers is "2", expected an integer > 0 '
                                                                 'or null'),
    ("feed_forward_proj number", edit(feed_forward_proj=5), "feed_forward_proj is 5, expected a string"),
    ("feed_forward_proj form", edit(feed_forward_proj="relu-gated"), "is not 'ACT' or 'gated-ACT'; " + REMEDY),
    ("dense_act_fn number", edit(dense_act_fn=3), "dense_act_fn is 3, expected a string or null"),
    ("dense_act_fn unknown", edit(dense_act_fn="tanh"), "activation 'tanh' is not supported"),
    ("is_gated_act string", edit(is_gated_act="yes"), 'is_gated_act is "yes", expected a boolean (true or false) '
                                                       'or null'),
    ("tie_word_embeddings string", edit(tie_word_embeddings="false"),
     'tie_word_embeddings is "false", expected a boolean (true or false)'),
    ("dropout_rate string", edit(dropout_rate="0.1"), 'dropout_rate is "0.1", expected a finite number in [0, 1)'),
    ("dropout_rate one", edit(dropout_rate=1), "dropout_rate is 1, expected a finite number in [0, 1)"),
    ("dropout_rate bool", edit(dropout_rate=False), "dropout_rate is false, expected a finite number"),
    ("epsilon negative", edit(layer_norm_epsilon=-1e-6), "layer_norm_epsilon is -1e-06, expected a finite number > 0"),
    ("epsilon zero", edit(layer_norm_epsilon=0), "layer_norm_epsilon is 0, expected a finite number > 0"),
    ("epsilon NaN", edit(layer_norm_epsilon=float("nan")), "layer_norm_epsilon is NaN, expected a finite number"),
    ("epsilon infinite", edit(layer_norm_epsilon=float("inf")), "layer_norm_epsilon is Infinity, expected a finite"),
    ("epsilon huge int", edit(layer_norm_epsilon=10 ** 400), "layer_norm_epsilon is 1000000"),
    ("epsilon string", edit(layer_norm_epsilon="1e-6"), 'layer_norm_epsilon is "1e-6", expected a finite number'),
    ("pad id too large", edit(pad_token_id=300), "pad_token_id is 300, expected an integer in [0, 300)"),
    ("eos id negative", edit(eos_token_id=-1), "eos_token_id is -1, expected an integer in [0, 300)"),
    ("start id float", edit(decoder_start_token_id=0.5), "decoder_start_token_id is 0.5, expected an integer"),
    ("model_type", edit(model_type="bart"), "model_type is \"bart\", but this loader implements T5 only"),
    # config.json as a whole
    ("config list", write("config.json", b'[{"d_model": 16}]'), 'config.json: holds [{"d_model": 16}], expected a '
                                                                 'JSON object of config keys'),
    ("config string", write("config.json", b'"t5"'), 'holds "t5", expected a JSON object'),
    ("config number", write("config.json", b"5"), "holds 5, expected a JSON object"),
    ("config not JSON", write("config.json", b"{not json"), "config.json: cannot read the model config (Expecting"),
    ("config not UTF-8", write("config.json", b'{"d_model": "\xff"}'), "cannot read the model config ('utf-8' codec"),
    ("config folder", make_folder("config.json"), "config.json: cannot read the model config (Is a directory); copy "
                                                  "config.json from the model's hub repo"),
    ("config missing", remove("config.json"), "model has no config.json (the model config); copy it from the "
                                              "model's hub repo or run: python tpv.py download NAME"),
    # the weights
    ("weights missing", remove("model.safetensors"), "model has no model.safetensors (the weights; or "
                                                     "model.safetensors.index.json and its shards)"),
    ("weights garbage", write("model.safetensors", b"garbage" * 10), "model.safetensors: unreadable safetensors file"),
    ("weights empty", write("model.safetensors", b""), "unreadable safetensors file (0 bytes, too few for a safetensors header)"),
    ("weights folder", make_folder("model.safetensors"), "model.safetensors: unreadable safetensors file"),
    ("weights of another shape", wider_weights, "does not fit its config.json: shared.weight has shape (300, 24)"),
    ("index not JSON", write("model.safetensors.index.json", b"{"), "index.json: not a safetensors index"),
    ("index list", write("model.safetensors.index.json", b"[]"), "index.json: not a safetensors index"),
    ("index numbers", write("model.safetensors.index.json", b'{"weight_map": {"a": 5}}'),
     "not a safetensors index (weight_map values must be file names)"),
    ("index lists", write("model.safetensors.index.json", b'{"weight_map": {"a": [1]}}'),
     "not a safetensors index (unhashable type"),
    ("index shard missing", write("model.safetensors.index.json", b'{"weight_map": {"a": "x.safetensors"}}'),
     "names shards that are missing: x.safetensors"),
    # the path itself
    ("path is a file", lambda folder: os.path.join(folder, "config.json"),
     "config.json is a file, not a model folder; pass the folder"),
    ("path absent", lambda folder: folder + "-absent", "model-absent: no such model folder"),
]


@pytest.mark.parametrize("setup, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_model_folder_is_one_line_naming_the_problem(folder, setup, message):
    path = setup(folder) or folder
    before = snapshot(os.path.dirname(folder))
    with pytest.raises(model_t5.CheckpointError) as e:
        model_t5.load_t5(path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert snapshot(os.path.dirname(folder)) == before


@pytest.mark.parametrize("setup, message", [
    (lambda folder: None, "model has no spiece.model (the T5 tokenizer); copy it from the model's hub repo or run: "
                          "python tpv.py download NAME"),
    (write("spiece.model", b"garbage"), "spiece.model: not a sentencepiece model"),
    # a path that is a file is taken for the .model file itself
    (lambda folder: os.path.join(folder, "config.json"), "config.json: not a sentencepiece model"),
    (lambda folder: folder + "/spiece.model", "spiece.model: no such model folder or sentencepiece file"),
], ids=["no spiece", "garbage spiece", "another file", "absent file"])
def test_bad_tokenizer_is_one_line_naming_the_file(folder, setup, message):
    path = setup(folder) or folder
    with pytest.raises(model_t5.CheckpointError) as e:
        model_t5.load_tokenizer(path)
    assert message in str(e.value) and "\n" not in str(e.value)


# -----------------------------------------------------------------------------
# valid configs still load

V1_1 = {  # the keys of google/flan-t5-small's config.json, shrunk; num_decoder_layers null means num_layers
    "architectures": ["T5ForConditionalGeneration"], "d_ff": 32, "d_kv": 4, "d_model": 16,
    "decoder_start_token_id": 0, "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True,
    "layer_norm_epsilon": 1e-06, "model_type": "t5", "n_positions": 512, "num_decoder_layers": None, "num_heads": 2,
    "num_layers": 2, "output_past": True, "pad_token_id": 0, "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32, "tie_word_embeddings": False, "torch_dtype": "float32",
    "transformers_version": "4.23.1", "use_cache": True, "vocab_size": 300}


def test_v1_0_config_loads(folder):
    model = model_t5.load_t5(folder)
    assert model.config.tie_word_embeddings and model.config.dense_act_fn == "relu"
    assert model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()


def test_gated_gelu_v1_1_config_with_null_decoder_layers_loads(tmp_path):
    known = {k: v for k, v in V1_1.items() if k in model_t5.T5Config.__dataclass_fields__}
    folder = write_checkpoint(str(tmp_path / "v1_1"), known)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(V1_1, f)  # with the keys tpv ignores, as the hub serves it
    cfg = model_t5.load_t5(folder).config
    assert cfg.num_decoder_layers == 2 and cfg.is_gated_act and not cfg.tie_word_embeddings


def test_json_ints_are_read_as_floats(folder):
    edit(layer_norm_epsilon=1, dropout_rate=0)(folder)
    cfg = model_t5.load_t5(folder).config
    assert (cfg.layer_norm_epsilon, cfg.dropout_rate) == (1.0, 0.0) and type(cfg.layer_norm_epsilon) is float


# -----------------------------------------------------------------------------
# load_t5 builds the model without initialising it (every weight comes from the file); T5(cfg) initialises

UNTIED = {**TINY, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}  # v1.1 and Flan


def every_tensor(model):
    """A model's tensors by every name they have: state_dict's (tied aliases too) and any non-persistent buffer."""
    return {**model.state_dict(), **dict(model.named_buffers(remove_duplicate=False))}


@pytest.mark.parametrize("dtype", weights.LOADABLE_DTYPES, ids=str)
@pytest.mark.parametrize("config", [TINY, UNTIED], ids=["tied", "untied"])
def test_loaded_model_is_the_saved_one(tmp_path, config, dtype):
    saved = random_model(config)
    loaded = model_t5.load_t5(write_checkpoint(str(tmp_path), config), dtype=dtype)
    expected, got = every_tensor(saved), every_tensor(loaded)
    assert got.keys() == expected.keys()
    for name, tensor in got.items():
        # the input embedding table (and its aliases) stays fp32 whatever the dtype: origins are its rows
        want = torch.float32 if tensor.data_ptr() == loaded.shared.weight.data_ptr() else dtype
        assert tensor.device.type == "cpu" and tensor.dtype == want, name  # none left on the meta device
        assert torch.equal(tensor, expected[name].to(want)), name
    assert len(list(loaded.parameters())) == len(list(saved.parameters()))  # a tied head is not a second weight
    assert (loaded.lm_head.weight is loaded.shared.weight) == saved.config.tie_word_embeddings
    assert not any(p.requires_grad for p in loaded.parameters())


def test_loaded_model_holds_copies_not_the_mapped_file(folder):
    model = model_t5.load_t5(folder)
    before = {k: v.clone() for k, v in every_tensor(model).items()}
    write_checkpoint(folder + "-other", seed=1)  # same shapes, so the same file size and layout
    with open(os.path.join(folder + "-other", "model.safetensors"), "rb") as f:
        other = f.read()
    with open(os.path.join(folder, "model.safetensors"), "r+b") as f:  # in place: a mapping would show the new bytes
        f.write(other)
    assert all(torch.equal(v, before[k]) for k, v in every_tensor(model).items())


def test_loading_draws_no_random_numbers(tiny, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_t5 initialised a weight that the checkpoint overwrites")
    for name in dir(torch.nn.init):
        if name.endswith("_") and not name.startswith("_"):  # normal_, kaiming_uniform_, ...
            monkeypatch.setattr(torch.nn.init, name, refuse)
    rng = torch.get_rng_state()
    model_t5.load_t5(tiny)
    assert torch.equal(torch.get_rng_state(), rng)


def test_loading_imports_no_compiler(tiny):
    """Random initialisation or to_empty on the meta device imports torch._dynamo and sympy: over a second per
    command."""
    code = ("import sys, model_t5; before = set(sys.modules); model_t5.load_t5(sys.argv[1]); "
            "print([m for m in ('torch._dynamo', 'sympy') if m in set(sys.modules) - before])")
    result = subprocess.run([sys.executable, "-c", code, tiny], capture_output=True, text=True, cwd=HERE,
                            timeout=120)
    assert result.returncode == 0 and result.stdout == "[]\n", result.stdout + result.stderr


def test_t5_built_directly_is_initialised_randomly(tiny):
    model_t5.load_t5(tiny)  # which skips the initialisation only while it builds its model
    one, two = random_model(seed=0), random_model(seed=1)
    for (name, a), b in zip(one.named_parameters(), two.parameters()):
        if "layer_norm" in name:
            assert torch.equal(a, torch.ones_like(a)) and torch.equal(b, a), name
        else:
            assert not torch.equal(a, b), name
    assert torch.equal(random_model(seed=0).shared.weight, one.shared.weight)  # seeded: reproducible


# -----------------------------------------------------------------------------
# --model names: hub.resolve_* hand the user's own paths to the loaders, which say what they lack

@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a download attempt fails at once
    return str(tmp_path / "models")


def test_trailing_slash_names_the_same_folder(folder, offline_hub):
    assert hub.resolve_model(folder + "/", offline_hub) == hub.resolve_model(folder, offline_hub) == folder
    assert hub.resolve_tokenizer(folder + "//", offline_hub) == folder


@pytest.mark.parametrize("setup, resolve, load, message", [
    (remove("config.json"), hub.resolve_model, model_t5.load_t5, "model has no config.json"),
    (lambda folder: None, hub.resolve_tokenizer, model_t5.load_tokenizer, "model has no spiece.model"),
    (lambda folder: os.path.join(folder, "model.safetensors"), hub.resolve_model, model_t5.load_t5,
     "model.safetensors is a file, not a model folder"),
], ids=["no config", "no spiece", "a file"])
def test_local_paths_are_not_downloaded_but_checked(folder, offline_hub, setup, resolve, load, message):
    path = setup(folder) or folder
    with pytest.raises(model_t5.CheckpointError, match=message):
        load(resolve(path, offline_hub, allow_download=False))


def test_absent_path_and_unfinished_download(tmp_path, offline_hub, monkeypatch):
    with pytest.raises(hub.DownloadError, match="no such model folder or file, and not a hub name"):
        hub.resolve_model(str(tmp_path / "absent"), offline_hub)
    # models_dir/NAME is our own unfinished download, not the user's folder: it is to be completed
    monkeypatch.chdir(tmp_path)
    os.mkdir("t5-small")
    with pytest.raises(hub.DownloadError, match="downloads are off; fetch it with: python tpv.py download t5-small"):
        hub.resolve_model("t5-small", ".", allow_download=False)


def test_cli_reports_a_bad_config_in_one_line(folder):
    edit(tie_word_embeddings="false")(folder)
    result = subprocess.run([sys.executable, os.path.join(HERE, "tpv.py"), "info", "--model", folder + "/"],
                            capture_output=True, text=True, cwd=HERE, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f'{folder}/config.json: tie_word_embeddings is "false"' in result.stderr
