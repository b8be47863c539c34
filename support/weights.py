"""
What both model families (model_t5.py, model_llama.py) share around their networks: reading and checking a
Hugging Face config.json into a dataclass, and strict loading of safetensors checkpoints (one file or shards).

    cfg = read_config(LlamaConfig, "DIR/config.json", ("llama",), "Llama")   # checked field by field
    model = build(Llama, cfg)                    # on the meta device: shapes only, no memory, no random numbers
    load_weights(model, "DIR", device, dtype, tied_names)

Loading reads each tensor's bytes straight into its place, a chunk at a time, so the host never holds more than the
loaded weights plus one chunk (an 8B model loads to the GPU without 16 GB of host memory).
"""
import contextlib
import json
import math
import os
import pickle
import struct
import warnings
from dataclasses import fields

import torch
import torch.nn as nn
from safetensors.torch import save_file

from support import files


class CheckpointError(ValueError):
    """A model folder or file the user pointed us to cannot be used; the message says how to fix it."""


LOADABLE_DTYPES = (torch.float32, torch.bfloat16)

# -----------------------------------------------------------------------------
# config.json -> a dataclass whose field names are config.json's keys


def rule(check, allowed):
    """A field's rule: the values check(value, config) accepts, and the same in words for error messages
    (formatted with the config's fields)."""
    return {"check": check, "allowed": allowed}


POSITIVE = rule(lambda v, cfg: v > 0, "> 0")
FRACTION = rule(lambda v, cfg: 0 <= v < 1, "in [0, 1)")
TOKEN_ID = rule(lambda v, cfg: 0 <= v < cfg.vocab_size, "in [0, {vocab_size}) (below vocab_size)")
TYPE_NAMES = {int: "an integer", float: "a finite number", str: "a string", bool: "a boolean (true or false)",
              dict: "a JSON object", list: "a list"}


def check_fields(cfg, rules):
    """Every field of a config dataclass as its declared type, in declaration order (a rule may use an earlier
    field: TOKEN_ID reads vocab_size)."""
    for f in fields(cfg):
        setattr(cfg, f.name, checked_value(f, getattr(cfg, f.name), cfg, rules))


def checked_value(f, value, cfg, rules):
    """A config field's value as its declared type (an int given for a float becomes that float), or a
    CheckpointError naming the key, what it holds and what the field takes."""
    kinds = getattr(f.type, "__args__", (f.type,))  # `int | None` -> (int, NoneType): null is allowed
    optional = type(None) in kinds
    kind = next(k for k in kinds if k is not type(None))
    if value is None and optional:
        return value
    typed = value
    if kind is float and type(value) is int:  # JSON writes 1.0 as 1; an int beyond float range is infinite
        typed = float(value) if abs(value) < 2 ** 1024 else math.inf
    fits = type(typed) is kind  # exact: to isinstance a bool is an int, but JSON's true is not 1
    if fits and kind is float:
        fits = math.isfinite(typed)
    field_rule = rules.get(f.name, {})
    if fits and field_rule:
        fits = field_rule["check"](typed, cfg)
    if not fits:
        words = [TYPE_NAMES.get(kind, kind.__name__), field_rule.get("allowed", "").format(**vars(cfg)),
                 "or null" if optional else ""]
        raise CheckpointError(f"{f.name} is {json_text(value)}, expected {' '.join(w for w in words if w)}")
    return typed


def json_text(value, limit=40):
    """A value as config.json spells it ("32", null, true), cut short: error messages stay one short line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # a value given from Python, not read from JSON
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_config_json(path):
    """config.json -> dict, or one line saying why not."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        reason = e.strerror if isinstance(e, OSError) else e
        raise CheckpointError(f"{path}: cannot read the model config ({reason}); copy config.json from the "
                              f"model's hub repo or run: python tpv.py download NAME") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: holds {json_text(raw)}, expected a JSON object of config keys; copy "
                              f"config.json from the model's hub repo or run: python tpv.py download NAME")
    return raw


def model_type(path):
    """config.json's model_type ("t5" when absent, as old T5 configs are)."""
    return read_config_json(path).get("model_type", "t5")


def read_config(cls, path, model_types, family):
    """A Hugging Face config.json -> cls; keys that do not shape the network (architectures, ...) are ignored. The
    keys of cls.REQUIRED (those the weights' shapes depend on, which Hugging Face would fill with the numbers of one
    model) must be there: a default would only turn up later as shape mismatches blaming something else."""
    raw = read_config_json(path)
    if raw.get("model_type", "t5") not in model_types:
        raise CheckpointError(f"{path}: model_type is {json_text(raw.get('model_type'))}, but this loader implements "
                              f"{family} only")
    missing = [k for k in getattr(cls, "REQUIRED", ()) if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: has no {missing[0]}{f' (nor {listing(missing[1:])})' if missing[1:] else ''}, "
                              f"which the weights' shapes depend on (tpv guesses no default for it); copy config.json "
                              f"from the model's hub repo or run: python tpv.py download NAME")
    known = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in raw.items() if k in known})
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}; correct it there, or download the model again") from None


# -----------------------------------------------------------------------------
# model folders and their files

def model_folder(path):
    """path when it is a folder (not one of GGUF weights alone); else one line saying whether it is absent or a file."""
    if os.path.isdir(path):
        gguf = sorted(n for n in os.listdir(path) if n.lower().endswith(".gguf"))
        if gguf and not any(os.path.exists(os.path.join(path, n)) for n in ("model.safetensors",
                                                                             "model.safetensors.index.json")):
            raise CheckpointError(gguf_refusal(os.path.join(path, gguf[0])))
        return path
    if path.lower().endswith(".gguf") and os.path.exists(path):
        raise CheckpointError(gguf_refusal(path))
    if os.path.exists(path):
        raise CheckpointError(f"{path} is a file, not a model folder; pass the folder that holds its config.json, "
                              f"its safetensors weights and its tokenizer")
    raise CheckpointError(f"{path}: no such model folder; get one with: python tpv.py download NAME (t5-base, "
                          f"meta-llama/Llama-3.1-8B-Instruct, ...)")


def model_file(folder, name, what):
    """folder/name, or one line naming the missing file (`what` says what it is) and how to get it."""
    file = os.path.join(folder, name)
    if not os.path.exists(file):  # one that exists but cannot be read is reported by its reader
        raise missing_file(folder, name, what)
    return file


def missing_file(folder, name, what):
    return CheckpointError(f"{folder} has no {name} ({what}); copy it from the model's hub repo or run: "
                           f"python tpv.py download NAME")


def checkpoint_files(path):
    """The safetensors files of a model folder: model.safetensors, or the shards of its index."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            if not all(isinstance(s, str) for s in shards):
                raise ValueError("weight_map values must be file names")
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:  # TypeError: unhashable values
            raise CheckpointError(f"{index}: not a safetensors index ({e}); download the model again "
                                  f"(python tpv.py download NAME)") from None
        missing = [s for s in shards if not os.path.exists(os.path.join(path, s))]
        if missing:
            raise CheckpointError(f"{index} names shards that are missing: {', '.join(missing)}; download the "
                                  f"model again (python tpv.py download NAME)")
        return [os.path.join(path, s) for s in shards]
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(single):
        return [single]
    if any(os.path.exists(os.path.join(path, n)) for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise CheckpointError(f"{path} holds only pytorch_model.bin: tpv loads safetensors only, because pickle "
                              f"files can run arbitrary code when loaded; convert it once with: "
                              f"python tpv.py convert {path}")
    raise missing_file(path, "model.safetensors", "the weights; or model.safetensors.index.json and its shards")


def gguf_refusal(file):
    return (f"{file}: GGUF weights (llama.cpp's format) are not read by tpv, which loads a Hugging Face folder "
            f"(config.json, safetensors weights, tokenizer.json); download that with: python tpv.py download NAME, "
            f"or convert the GGUF file once with transformers (from_pretrained(folder, gguf_file=...), then "
            f"save_pretrained)")


# -----------------------------------------------------------------------------
# weights

@contextlib.contextmanager
def skipped_random_init():
    """Inside, new nn.Linear and nn.Embedding modules (what both networks are built from) keep their weights as
    allocated, without their random initialisation."""
    initialisers = {cls: cls.reset_parameters for cls in (nn.Linear, nn.Embedding)}
    for cls in initialisers:
        cls.reset_parameters = lambda self: None
    try:
        yield
    finally:
        for cls, reset_parameters in initialisers.items():
            cls.reset_parameters = reset_parameters


def build(model_class, cfg):
    """The network on the meta device (shapes only, no memory) and without random initialisation: computing on
    meta tensors (random init, to_empty) runs torch's Python reference code, whose first call imports torch's
    compiler (torch._dynamo, sympy): over a second of every command's start."""
    with torch.device("meta"), skipped_random_init():
        return model_class(cfg)


def check_dtype(dtype):
    if dtype not in LOADABLE_DTYPES:
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype} (T5 overflows in float16: "
                         f"transformers#9295)")


def load_weights(model, path, device, dtype, tied_names=(), ignored=(), float32_names=()):
    """Fills a model built by build() with the tensors of path's safetensors files, one tensor at a time.

    tied_names: the names under which a checkpoint may store the one embedding the model ties (its own name
    first); ignored: names Hugging Face also ignores; float32_names: weights loaded in float32 whatever dtype.
    Every problem (missing, unexpected, wrong shape, not a float, NaN, tied copies that differ) is collected and
    reported together in one CheckpointError.
    """
    check_dtype(dtype)
    expected = {name: p.shape for name, p in model.named_parameters()}  # tied weights appear once
    loaded, stored_as, problems, unexpected = {}, {}, [], []
    for file in checkpoint_files(path):
        try:
            with open(file, "rb") as f:
                for key, (stored_dtype, shape, start) in sorted(safetensors_header(f).items()):
                    name = tied_names[0] if key in tied_names else key
                    if name not in expected or key in ignored:
                        unexpected += [] if key in ignored else [key]
                        continue
                    stored_as.setdefault(name, key)
                    if shape != tuple(expected[name]):
                        problems.append((name, f"{key} has shape {shape}, config.json implies {tuple(expected[name])}"))
                        continue
                    if not stored_dtype.is_floating_point:
                        problems.append((name, f"{key} has dtype {stored_dtype}, expected a float"))
                        continue
                    wanted = torch.float32 if name in float32_names else dtype
                    value, finite = read_tensor(f, start, stored_dtype, shape, device, wanted)
                    if not finite:
                        problems.append((name, f"{key} holds NaN or infinite values"))
                    elif name not in loaded:
                        loaded[name] = value
                    elif not torch.equal(loaded[name], value):
                        problems.append((name, f"{key} differs from {stored_as[name]} although the model ties them"))
        except (ValueError, OSError) as e:
            raise CheckpointError(f"{file}: unreadable safetensors file ({e}); delete it and download again") from None
    order = list(expected)
    problems = [p for _, p in sorted(problems, key=lambda named: order.index(named[0]))]  # in the model's order
    missing = [n for n in expected if n not in stored_as]
    problems[:0] = [f"{len(missing)} missing: {listing(missing)}"] if missing else []
    problems += [f"{len(unexpected)} unexpected: {listing(sorted(unexpected))}"] if unexpected else []
    if problems:
        raise CheckpointError(f"{path} does not fit its config.json: " + "; ".join(problems))
    for name, value in loaded.items():
        owner, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(owner), attr, nn.Parameter(value, requires_grad=False))
    model.tie_weights()  # a tied head still holds the meta tensor it shared with the embedding
    model.source = path
    return model.eval().requires_grad_(False)


# the safetensors format: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
# then the tensors' bytes (huggingface/safetensors README)
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def safetensors_header(f):
    """{name: (dtype, shape, offset of its first byte in the file)} of an open safetensors file, every entry
    checked against the file's size (a file cut short is caught here, before any byte is read)."""
    size = os.fstat(f.fileno()).st_size
    length = int.from_bytes(f.read(8), "little")
    if size < 8 or length > size - 8:
        raise ValueError(f"{size:,} bytes, too few for the {length:,}-byte header it announces" if size >= 8 else
                         f"{size:,} bytes, too few for a safetensors header")
    try:
        entries = {}
        for name, info in json.loads(f.read(length)).items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in SAFETENSORS_DTYPES:
                raise ValueError(f"{name} has the unknown dtype {info['dtype']!r}")
            dtype, shape, (start, end) = SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]), info["data_offsets"]
            if not all(type(v) is int and v >= 0 for v in (*shape, start, end)):
                raise ValueError(f"{name}'s shape {list(shape)} or offsets {[start, end]} are not whole numbers")
            if end - start != math.prod(shape) * dtype.itemsize or not start <= end <= size - 8 - length:
                raise ValueError(f"{name}'s bytes {start}..{end} do not fit its shape or the file")
            entries[name] = (dtype, shape, 8 + length + start)
    except (KeyError, TypeError, AttributeError) as e:  # JSON, but not a header of tensors
        raise ValueError(f"a header entry is malformed ({type(e).__name__}: {e})") from None
    return entries


def read_tensor(f, start, stored_dtype, shape, device, dtype, chunk=1 << 24):
    """One tensor's bytes read chunk by chunk into a new tensor of `dtype` on `device` -> (tensor, all finite).

    Plain reads, not safetensors' memory map: the pages of a mapped file stay in the process's resident memory until
    the whole file is closed, so loading one 16 GB file would hold the file and the model (measured: 2.1x the
    weights). Here the host holds the model plus one chunk of 16M elements (bench.py load)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    flat = out.view(-1)
    direct = out.device.type == "cpu" and stored_dtype == dtype  # read straight into the weights
    staging = None if direct else torch.empty(min(chunk, out.numel()), dtype=stored_dtype)
    finite = True
    f.seek(start)
    for begin in range(0, out.numel(), chunk):
        n = min(chunk, out.numel() - begin)
        piece = flat[begin:begin + n] if direct else staging[:n]
        if f.readinto(memoryview(piece.view(torch.uint8).numpy())) != n * stored_dtype.itemsize:
            raise ValueError("the file ends inside a tensor")
        if not direct:
            flat[begin:begin + n].copy_(piece)
        # checked as loaded: a float64 1e300 is finite in the file and infinite in float32
        finite = finite and bool(torch.isfinite(flat[begin:begin + n]).all())
    return out, finite


def listing(names, shown=6):
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")


def save_weights(model, folder, config):
    """model.safetensors and config.json in Hugging Face's format (our loaders and transformers read them back)."""
    # named_parameters lists a tied embedding once: safetensors refuses tensors that share memory
    save_file({k: v.detach().contiguous() for k, v in model.named_parameters()},
              os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)


def read_pickle(path):
    """A PyTorch pickle (.bin) read with weights_only=True, so that no code in it runs -> the object it holds, or a
    ValueError saying in tpv's words why not. PyTorch's own text would point the wrong way ("re-run with
    weights_only=False": exactly what tpv refuses to do), or say nothing (a bare EOFError)."""
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4 ...": several lines about torch, not the file
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)  # never runs pickled code
    except pickle.UnpicklingError as e:
        if "truncated" in str(e):
            raise ValueError("it ends early (a truncated download or copy?)") from None
        raise ValueError("it holds a pickle tpv does not load: only tensors in plain dicts and lists are read "
                         "(unpickling anything else could run code); save a plain dict of tensors, or a safetensors "
                         "file") from None
    except EOFError:
        raise ValueError("it is empty or ends early (a truncated download or copy?)") from None
    except RuntimeError as e:  # PytorchStreamReader: not a zip archive, or a damaged one
        raise ValueError(f"it is not a PyTorch file, or a damaged one ({str(e).split('.')[0]})") from None
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, struct.error):  # the unpickler on garbage
        raise ValueError("it is not a PyTorch file, or a damaged one (its bytes are no pickle)") from None
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from None


def convert_bin(folder, force=False):
    """pytorch_model.bin -> model.safetensors beside it, reading the pickle with weights_only=True (no code runs).
    Returns (path written, tensors kept, tied duplicates dropped)."""
    source, target = os.path.join(folder, "pytorch_model.bin"), os.path.join(folder, "model.safetensors")
    if not os.path.isfile(source):
        raise CheckpointError(f"{source}: no such file (sharded .bin checkpoints are not supported)")
    files.refuse_existing(target, force, "model")
    try:
        state = read_pickle(source)
    except ValueError as e:
        raise CheckpointError(f"{source}: not a plain state dict of tensors: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{source}: not a plain state dict of tensors")
    seen, tensors = set(), {}  # safetensors refuses tensors that share memory (tied embeddings): one per storage
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            tensors[name] = t.contiguous()
    files.atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    return target, len(tensors), len(state) - len(tensors)
