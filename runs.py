"""
Where runs live and what they leave behind, in one place:

    runs/<model>/origin_<i>/<name>.safetensors        the prompt file: prompt, init and metadata (prompts.py)
    runs/<model>/origin_<i>/<name>.json               the record: config, validation history, test metrics
    runs/<model>/packs/<name>-<hash>.ckpt.safetensors  while training only: everything a pack needs to --resume

A run is finished when its record exists; nothing finished is replaced without --force (files.py). A run name
is a task (mnli), a multi-task run (mnli,qnli), a sum (mnli+qnli) or a few-shot run (scitail_100shots_init-mnli);
anything ending in .safetensors or holding a path separator is a prompt file instead.
"""
import glob
import hashlib
import json
import os
import re
from typing import NamedTuple

import data
from support import files
import prompts


class RunError(ValueError):
    """A run name, an origin list or a run's files do not allow what was asked; the message says what to do."""


class RunPaths(NamedTuple):
    prompt: str
    record: str
    old_checkpoint: str  # where tpv kept a pack's checkpoint before pack checkpoints had names (support/resume.py)
    failure: str  # why a run stopped (non-finite); not a record, so run.sh retries the run


def model_name(name):
    """`--model DIR/` and `--model DIR` are the same model (hub names such as google/t5-v1_1-base are unchanged)."""
    return os.path.normpath(name) if name else name


def model_folder(out, model):
    return os.path.join(out, os.path.basename(model_name(model)))


def run_folder(out, model, origin):
    return os.path.join(model_folder(out, model), f"origin_{origin}")


def run_paths(out, model, origin, name):
    stem = os.path.join(run_folder(out, model, origin), name)
    return RunPaths(stem + ".safetensors", stem + ".json", stem + ".ckpt.safetensors", stem + ".failed.json")


def run_name(task, shots, init, name=None, prompt_len=None):
    """The file name of a training run: from task, shots and init unless --name says otherwise; TASK_no-prompt
    for the model without a prompt (--prompt-len 0)."""
    if name is not None:
        return check_name(name)
    if prompt_len == 0:
        return task + "_no-prompt"
    stem = task + (f"_{shots}shots" if shots is not None else "")
    if init != "origin":
        stem += "_init-" + ("text" if init.startswith("text:") else os.path.splitext(os.path.basename(init))[0])
    return stem


def check_name(name):
    """A run name given by the user must be a plain file name: runs are written under --out, nowhere else."""
    if name and name == os.path.basename(name) and not name.startswith(".") and "/" not in name:
        return name
    raise RunError(f"run name {name!r} must be a plain file name (no folders, not starting with '.'); runs are "
                   f"written under --out")


def parse_run_name(name):
    """A few-shot run name -> (target task, shots, init name); None for other runs."""
    match = re.fullmatch(r"(\w+)_(\d+)shots(?:_init-(.+))?", name)
    return (match.group(1), int(match.group(2)), match.group(3) or "origin") if match else None


def parse_origins(text):
    """'0-9', '0,3,5' or '0-2,7' -> sorted origin indices; anything else is one clear line."""
    found = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        low, high = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (1, 0)
        if low > high or high >= prompts.N_ORIGINS:
            raise RunError(f"--origins {text!r}: use origins 0..{prompts.N_ORIGINS - 1} as a comma list or a range "
                           f"(0,3,5 or 0-9)")
        found.update(range(low, high + 1))
    return sorted(found)


# -----------------------------------------------------------------------------
# finding prompts: a file, or a run name on a model and origin

def is_prompt_file(spec):
    return spec.endswith(".safetensors") or os.sep in spec or "/" in spec


def prompt_file(spec, out, model, origin):
    """The one rule for "a prompt file or a run name"."""
    if is_prompt_file(spec):
        return spec
    path = run_paths(out, model, origin, spec).prompt
    if not os.path.exists(path):
        unknown = [t for t in re.split(r"[,+]", spec) if t not in data.TASKS]
        hint = (f"{unknown[0]!r} is neither a task ({', '.join(data.TASKS)}) nor a run there" if unknown else
                f"train it with: python tpv.py train {spec} --origin {origin} --model {model}")
        raise prompts.PromptError(f"no trained prompt for {spec} on origin {origin} ({path}); {hint}")
    return path


def load_fitting(path, model_name_, model):
    """(prompt, init, metadata) of a prompt file checked against the model it is used with."""
    prompt, init, meta = prompts.load_prompt(path)
    prompts.check_fits(path, prompt, meta, model_name_, model)
    return prompt, init, meta


def trained_vector(spec, out, model_name_, model, origin):
    path = prompt_file(spec, out, model_name_, origin)
    load_fitting(path, model_name_, model)
    return prompts.load_vector(path)


def trained_origins(out, model, name, wanted=None):
    """The origins a run name was trained on (all of them, or `wanted`, each of which must exist)."""
    found = sorted(int(m.group(1)) for p in glob.glob(run_paths(out, model, "*", name).prompt)
                   if (m := re.search(r"origin_(\d+)", p)))
    missing = [o for o in (wanted or []) if o not in found]
    if missing:
        raise prompts.PromptError(f"no trained prompt for {name} on origin {missing[0]} (under "
                                  f"{model_folder(out, model)}); train it with: "
                                  f"python tpv.py train {name} --origin {missing[0]}")
    return wanted or found


def trained_tasks(out, model):
    """The task names that have a trained prompt on some origin."""
    names = {os.path.basename(p)[:-len(".safetensors")]
             for p in glob.glob(os.path.join(model_folder(out, model), "origin_*", "*.safetensors"))}
    return sorted(n for n in names if n in data.TASKS)


def resolve_init(config, model, tokenizer, out):
    """--init -> the (n, d) prompt a run starts from. Default: the paper's origin_<--origin>."""
    spec, n = config.init, config.prompt_len
    if spec == "origin":
        return prompts.origin_prompt(model, config.origin, n)
    if spec in ("random", "vocab") or spec.startswith("text:"):
        return prompts.initial_prompt(model, tokenizer, spec, n, config.seed)
    if is_prompt_file(spec):  # continue from a tuned prompt
        return load_fitting(spec, config.model, model)[0]
    # task[+task...]: the origin plus the sum of those tasks' vectors, all trained on this origin (paper §6b)
    vectors = [trained_vector(name, out, config.model, model, config.origin) for name in spec.split("+")]
    origin = prompts.origin_prompt(model, config.origin, n)
    return prompts.apply(origin, prompts.add(*vectors), origin_name=f"origin_{config.origin}")


# -----------------------------------------------------------------------------
# writing: metadata, and finishing a run

def config_hash(model):
    return hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def prompt_meta(model, model_name_, task, origin, init, **extra):
    """The metadata of every prompt file tpv writes (training, addition, import): the same keys first."""
    return {"task": task, "model": model_name(model_name_), "family": model.family, "model_config": config_hash(model),
            "origin": str(origin), "init": init, "prompt_len": str(extra.pop("prompt_len")), **{k: str(v) for k, v in extra.items()}}


def run_meta(model, config, record, prompt_len):
    """The metadata of a trained prompt: the run's config and where its best validation loss was."""
    best = {k: (f"{record[k]:.6f}" if k == "best_validation_loss" else record[k])
            for k in ("steps", "best_step", "best_validation_loss") if k in record}
    return prompt_meta(model, config.model, config.task, config.origin, config.init, prompt_len=prompt_len,
                       shots=config.shots, seed=config.seed, **best)


def finish(paths, prompt, init, meta, record):
    """The prompt file first, then the record: a run with a record is finished. (A trained run's checkpoint goes
    after every run of its pack is written: a pack killed in between is finished by --resume, packs.py.)"""
    prompts.save_prompt(paths.prompt, prompt, init, meta)
    files.write_json(paths.record, record)
