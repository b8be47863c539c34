"""
The model families tpv implements, and the one place that knows them: config.json's model_type picks a family
module, and every family module provides the same names, so that the loop, evaluation, packs and the command line
call those names and never ask which family a model is.

    family = families.at(folder)                   # model_t5 or model_llama, from config.json's model_type
    model, tokenizer = family.load(folder), family.load_tokenizer(folder)
    family = families.of(model)                    # the module of a loaded model

What every family module provides (test_tpv.py checks that each one has all of it):

    FAMILY          "t5" / "llama": what prompt files record; a prompt never crosses families
    NAME            how messages name the family
    PEFT_TASK_TYPE  the task type of its PEFT prompt-tuning adapters (support/interchange.py)
    OPTIONS         the command-line options only this family takes (families.check_options refuses the others)
    GRID            run.sh's default grid for the family: {"origins": "0-2", "tasks": (...)} (tpv.py info --grid)
    recipe_defaults(task)                         -> the recipe's values for this family (train.recipe)
    load(path, device, dtype)                     -> the model, in eval mode, every weight frozen
    load_tokenizer(path)                          -> encode(text), decode(ids), and
                                                     encode_example(task, row, max_source) -> (source, target, cut)
    batch_maker(model, tokenizer, loss)           -> make_batch(tokens, idx): a training or validation batch
    run_losses(model, prompts, batch)             -> (R,) each prompt's summed token loss over the batch's B rows
    label_words(task)                             -> the words it predicts (empty: none to rank, a regression task)
    predict_words(model, tokenizer, task, tokens, idx, prompts, scoring, max_new_tokens)
                                                  -> R lists of B predicted label words
    inference_rows(model, device, prompt_len, validation) -> rows a validation or evaluation forward takes
    largest_pack(config, batch_size, source_len, target_len, dtype, budget) -> runs a step fits in budget
    describe(model)                               -> the lines `tpv.py info` prints about the parameters
    tiny_model(tokenizer_file, seed)              -> (a small random model, write(folder)), for smoke runs

run_losses and predict_words take the R prompts (R, n, d) and the B rows apart, so that a family can compute
what every row of a prompt shares once per prompt.
"""
import os

import torch

import model_llama
import model_t5
from support import weights

FAMILIES = {"t5": model_t5, "mt5": model_t5, "llama": model_llama}  # config.json's model_type -> module
BY_NAME = {module.FAMILY: module for module in FAMILIES.values()}  # what prompt files record -> module
DEFAULT = model_t5  # the paper's family: prompt files from before the Llama family hold T5 prompts
INTERFACE = ("FAMILY", "NAME", "PEFT_TASK_TYPE", "OPTIONS", "GRID", "recipe_defaults", "load", "load_tokenizer",
             "batch_maker", "run_losses", "label_words", "predict_words", "inference_rows", "largest_pack", "describe",
             "tiny_model")


class FamilyError(ValueError):
    """An option the model's family does not take; the message is one line."""


def at(path):
    """The family module of a model folder, from its config.json's model_type."""
    kind = weights.model_type(weights.model_file(weights.model_folder(path), "config.json", "the model config"))
    if type(kind) is not str or kind not in FAMILIES:
        raise weights.CheckpointError(f"{path}/config.json: model_type {weights.json_text(kind)} is a model "
                                      f"family tpv does not implement (it implements "
                                      f"{', '.join(sorted({m.NAME for m in FAMILIES.values()}))})")
    return FAMILIES[kind]


def of(model):
    """The family module of a loaded model."""
    return BY_NAME[model.family]


def load(path, device="cpu", dtype=torch.float32):
    return at(path).load(path, device=device, dtype=dtype)


def check_options(family, given):
    """given: {option: value} of the family-only options on the command line; one set for another family is
    refused in one line."""
    for option, value in given.items():
        if value is not None and value is not False and option not in family.OPTIONS:  # --dropout 0 is given
            owner = next(m.NAME for m in BY_NAME.values() if option in m.OPTIONS)
            raise FamilyError(f"--{option.replace('_', '-')} is for {owner} models, and this is a "
                              f"{family.NAME} model; drop the flag")


def family_options():
    """Every family-only option (the union of the families' OPTIONS)."""
    return sorted({option for module in BY_NAME.values() for option in module.OPTIONS})


def load_tokenizer(path):
    """The tokenizer of a model folder (its family's), or of a folder or file that holds only a tokenizer: a
    tokenizer.json is byte-level BPE (model_llama), anything else sentencepiece (model_t5)."""
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")):
        return at(path).load_tokenizer(path)
    if path.endswith(".json") or os.path.exists(os.path.join(path, "tokenizer.json")):
        return model_llama.load_tokenizer(path)
    return model_t5.load_tokenizer(path)
