"""
The one place that knows which model families tpv implements: config.json's model_type picks the module, and
every family module offers the same functions (load, tokenizer, greedy decoding, label scoring).

    model = models.load(folder, device)          # model_t5.T5 or model_llama.Llama, eval mode, frozen
    tokenizer = models.load_tokenizer(folder)    # T5's sentencepiece, or byte-level BPE with a chat format
"""
import os

import torch

from support import weights
import model_llama
import model_t5

FAMILIES = {"t5": model_t5, "mt5": model_t5, "llama": model_llama}  # model_type -> module
LOADERS = {model_t5: model_t5.load_t5, model_llama: model_llama.load_llama}
NAMES = {model_t5: "T5", model_llama: "Llama (Llama 3, DeepSeek-LLM)"}


def family_at(path):
    """The family module of a model folder, from its config.json's model_type."""
    kind = weights.model_type(weights.model_file(weights.model_folder(path), "config.json",
                                                         "the model config"))
    if type(kind) is not str or kind not in FAMILIES:
        raise weights.CheckpointError(f"{path}/config.json: model_type {weights.json_text(kind)} is a model "
                                          f"family tpv does not implement (it implements "
                                          f"{', '.join(sorted(set(NAMES.values())))})")
    return FAMILIES[kind]


def family_name(path):
    """"t5" or "llama": what a model folder holds."""
    return (model_llama.Llama if family_at(path) is model_llama else model_t5.T5).family


def load(path, device="cpu", dtype=torch.float32):
    return LOADERS[family_at(path)](path, device=device, dtype=dtype)


def load_tokenizer(path):
    """The tokenizer of a model folder (its family's file), or a tokenizer file itself."""
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")):
        return family_at(path).load_tokenizer(path)
    if path.endswith(".json") or os.path.exists(os.path.join(path, "tokenizer.json")):
        return model_llama.load_tokenizer(path)
    return model_t5.load_tokenizer(path)
