"""
Prompts from and to other tools: the official code's released prompts (.bin), and PEFT prompt-tuning adapters.

PEFT's format holds the tuned prompt only (`prompt_embeddings`, with the seq2seq encoder rows first), never the
init it started from; an imported prompt therefore gets origin_<--origin> as its init, and an exported one loses
its init.
"""
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import families
import prompts
from support import files, weights

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


FAMILIES = {m.PEFT_TASK_TYPE: m.FAMILY for m in families.BY_NAME.values()}  # PEFT task types -> tpv's families


def read_adapter(folder):
    """A PEFT prompt-tuning adapter folder -> (prompt_embeddings, num_virtual_tokens, the family its task type
    names or None), checked."""
    config = files.read_json(os.path.join(folder, ADAPTER_CONFIG))
    if not isinstance(config, dict) or config.get("peft_type") != "PROMPT_TUNING":
        kind = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise prompts.PromptError(f"{folder}: a {kind} adapter, not PEFT prompt tuning (peft_type PROMPT_TUNING)")
    n = config.get("num_virtual_tokens")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise prompts.PromptError(f"{os.path.join(folder, ADAPTER_CONFIG)}: num_virtual_tokens must be a positive "
                                  f"integer, got {n!r}")
    path = os.path.join(folder, ADAPTER_WEIGHTS)
    tensors = load_file(path)
    if "prompt_embeddings" not in tensors:
        raise prompts.PromptError(f"{path}: has no prompt_embeddings tensor (it holds "
                                  f"{', '.join(sorted(tensors)[:4]) or 'none'}); not a prompt-tuning adapter")
    tensor = tensors["prompt_embeddings"]
    check_adapter_shape(path, tensor, config, n)
    return tensor, n, FAMILIES.get(config.get("task_type"))


def check_adapter_shape(path, tensor, config, n):
    """PEFT loads prompt_embeddings into an embedding of num_virtual_tokens x num_transformer_submodules rows of
    token_dim (PEFT's default submodules: 2 for SEQ_2_SEQ_LM, 1 otherwise) and refuses any other shape; so does
    tpv, rather than keep some rows of a file that says something else."""
    subs = config.get("num_transformer_submodules") or (2 if config.get("task_type") == "SEQ_2_SEQ_LM" else 1)
    dim = config.get("token_dim")
    if not isinstance(subs, int) or isinstance(subs, bool) or subs < 1:
        raise prompts.PromptError(f"{path}: num_transformer_submodules must be a positive integer, got {subs!r}")
    if tensor.dim() != 2 or tensor.shape[0] != n * subs or (isinstance(dim, int) and tensor.shape[1] != dim):
        expected = f"({n * subs}, {dim if isinstance(dim, int) else 'd'})"
        raise prompts.PromptError(f"{path}: prompt_embeddings has shape {tuple(tensor.shape)}, but its "
                                  f"{ADAPTER_CONFIG} implies {expected} (num_virtual_tokens {n} x "
                                  f"num_transformer_submodules {subs}); PEFT refuses it too: export the adapter again")


def read_foreign_prompt(source, n):
    """An official .bin ({"prompt_embeddings": T} or a bare tensor) or a PEFT adapter (its folder or its
    safetensors file) -> the (n, d) float32 prompt. Seq2seq prompts hold the encoder rows first (then PEFT's
    decoder rows, which inference never used): their first n rows are kept; a causal-LM adapter's n are all.
    -> (prompt, metadata: the model family an adapter was made for, if it says)."""
    meta = {}
    try:
        if os.path.isdir(source) or source.endswith(".safetensors"):
            tensor, n, family = read_adapter(source if os.path.isdir(source) else os.path.dirname(source) or ".")
            meta = {"family": family} if family else {}
        else:
            loaded = weights.read_pickle(source)
            tensor = loaded.get("prompt_embeddings") if isinstance(loaded, dict) else loaded
    except prompts.PromptError:
        raise  # read_adapter's own line, naming the file and what is wrong
    except (OSError, ValueError, SafetensorError) as e:
        raise prompts.PromptError(f"{source}: not an official prompt file or PEFT prompt-tuning adapter: "
                                  f"{foreign_reason(e)}") from None
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2 or not tensor.is_floating_point():
        raise prompts.PromptError(f"{source}: expected a float (rows, d) tensor of prompt embeddings")
    if tensor.shape[0] < n:
        raise prompts.PromptError(f"{source}: {tensor.shape[0]} rows, fewer than the {n} prompt vectors asked for "
                                  f"(--prompt-len)")
    if not torch.isfinite(tensor[:n]).all():
        raise prompts.PromptError(f"{source}: the prompt holds NaN or infinite values")
    return tensor[:n].detach().float(), meta


def foreign_reason(e):
    """Why a foreign file could not be read, in one line: the OS's words with the file they are about, or the
    reader's first line."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def write_adapter(folder, prompt, model_name, family, force):
    """A prompt -> a PEFT prompt-tuning adapter that PEFT loads, of the family's task type: SEQ_2_SEQ_LM for T5
    (encoder rows only), CAUSAL_LM for decoder-only models (every row goes before the input)."""
    if family not in families.BY_NAME:  # before anything is written
        raise prompts.PromptError(f"a prompt of a {family!r} model: tpv exports the prompts of its families "
                                  f"({', '.join(families.BY_NAME)}) only")
    weights, config_path = os.path.join(folder, ADAPTER_WEIGHTS), os.path.join(folder, ADAPTER_CONFIG)
    for path in (weights, config_path):
        files.refuse_existing(path, force, "PEFT adapter")
    files.atomic_write(weights, lambda tmp: save_file({"prompt_embeddings": prompt.contiguous()}, tmp,
                                                      metadata={"format": "pt"}))
    files.write_json(config_path, {"peft_type": "PROMPT_TUNING", "task_type": families.BY_NAME[family].PEFT_TASK_TYPE,
                                   "num_virtual_tokens": prompt.shape[0], "token_dim": prompt.shape[1],
                                   "num_transformer_submodules": 1, "prompt_tuning_init": "RANDOM",
                                   "base_model_name_or_path": model_name, "inference_mode": True})
