"""
Checkpoints of a pack of runs (train.py's TrainState): written at every validation and on Ctrl-C, read back by
--resume so that the pack continues bit for bit (prompts, AdamW moments, schedule position, random state, data
position, validation history), and deleted once every run of the pack is written.

A pack's checkpoint is named after the runs it holds, in their order:

    runs/<model>/packs/<first run's name>-<hash of the run labels>.ckpt.safetensors

so that the runs a file holds are known from its name. tpv before this layout kept a pack's checkpoint as its first
run's runs/<model>/origin_<i>/<name>.ckpt.safetensors; adopt_old_checkpoints moves such files to their new name.
"""
import dataclasses
import glob
import hashlib
import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from support import files

NOT_COMPARED = ("log_every",)  # the only TrainConfig field that does not change the numbers
SUFFIX = ".ckpt.safetensors"


class ResumeError(RuntimeError):
    """A checkpoint that cannot be resumed as asked; the message names the file and what to do."""


def pack_checkpoint(model_folder, labels):
    """The checkpoint file of the pack holding the runs `labels` (origin_<i>/<name>), in that order."""
    digest = hashlib.sha256("\n".join(labels).encode()).hexdigest()[:12]
    return os.path.join(model_folder, "packs", f"{os.path.basename(labels[0])}-{digest}{SUFFIX}")


def read_state(path):
    """A checkpoint's JSON state, from its header alone; an unreadable file is one line naming it."""
    try:
        with safe_open(path, "pt") as f:
            return checked_state(json.loads((f.metadata() or {}).get("state", "null")))
    except (SafetensorError, OSError, ValueError) as e:
        raise unreadable(path, e) from None


# what every checkpoint's state holds (a checkpoint of the layout before packs lacks "runs" and "pack")
STATE_KEYS = {"args": dict, "step": int, "epoch": int, "next_batch": int, "history": list, "param_groups": list,
              "best_loss": (list, float, int), "best_step": (list, int)}  # a number: one run, before packs


def checked_state(state):
    """The state of a checkpoint's header, or a ValueError naming what is missing."""
    if not isinstance(state, dict):
        raise ValueError("it holds no tpv training state")
    wrong = [k for k, kind in STATE_KEYS.items() if not isinstance(state.get(k), kind)]
    if wrong or not isinstance(state.get("runs", []), list):
        raise ValueError(f"its state lacks {(wrong or ['runs'])[0]}")
    return state


def unreadable(path, e):
    """The one line for a checkpoint tpv cannot read: what is wrong with it, and the way to start over that the
    next command accepts whatever the pack (deleting it; --force is refused for a pack holding other runs)."""
    if os.path.isdir(path):
        what, remove = "a folder, not a checkpoint file", "remove that folder"
    elif not os.path.exists(path):  # a link to nothing, or a file deleted since it was listed
        what, remove = "it is gone, or a link to nothing", "remove the link if one is left"
    else:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        what = ("an empty file" if size == 0 else
                f"{size:,} bytes, cut short or damaged: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        remove = "delete it"
    return ResumeError(f"{path}: not a readable tpv checkpoint ({what}); its progress is lost: {remove}, then run "
                       f"the same command again to start its runs over")


def pack_checkpoints(model_folder):
    """{checkpoint path: the labels of the runs it holds, or None where the file is unreadable} of every pack
    checkpoint of a model. An unreadable one is reported by the command that resumes it (read_state); another
    command passes it by."""
    found = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(model_folder), "packs", "*" + SUFFIX))):
        try:
            found[path] = read_state(path)["runs"]
        except ResumeError:
            found[path] = None
    return found


def adopt_old_checkpoints(model_folder, old_paths):
    """Moves checkpoints written before pack checkpoints had names of their own (a pack's first run's
    <name>.ckpt.safetensors beside its prompt file; old_paths: where the command's runs would have kept them) to
    their pack's name. A file whose runs cannot be read, or whose new name is taken, is one line naming it."""
    for old in old_paths:
        if not os.path.exists(old):
            continue
        own = f"{os.path.basename(os.path.dirname(old))}/{os.path.basename(old)[:-len(SUFFIX)]}"
        state = read_state(old)
        new = pack_checkpoint(model_folder, state.get("runs", [own]))
        if os.path.exists(new):
            raise ResumeError(f"{old} is an older checkpoint of the runs of {new}; keep one of them (delete the "
                              f"other) and run again")
        files.make_folder(os.path.dirname(new))
        if "runs" in state:
            os.replace(old, new)
        else:  # before packs: one run, its own; the moved file records it, as every pack checkpoint does
            tensors, state = load_checkpoint(old)
            files.atomic_write(new, lambda tmp: save_file(tensors, tmp, metadata={"state": json.dumps(
                {**state, "runs": [own]})}))
            os.remove(old)


def comparable(config):
    """The config as a checkpoint records it: resuming with other values would not continue the same run."""
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_COMPARED}
    return values | {"data_dir": os.path.abspath(config.data_dir), "model": os.path.normpath(config.model)}


def save(state, path, config, runs, pack):
    """Everything needed to continue the pack; state.rng is the random state at the start of the next step."""
    tensors = {"prompt": state.prompts, "init": state.inits, "best_prompt": state.best_prompts, "rng_cpu": state.rng,
               **{f"adam{k}": v for k, v in state.optimizer.state_dict()["state"].get(0, {}).items()}}
    if state.prompts.device.type == "cuda":
        tensors["rng_cuda"] = torch.cuda.get_rng_state(state.prompts.device)
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ResumeError(f"refusing to checkpoint non-finite {', '.join(bad)}")
    meta = {"args": comparable(config), "runs": runs, "pack": pack, "step": state.step, "epoch": state.epoch,
            "next_batch": state.next_batch, "best_loss": state.best_loss, "best_step": state.best_step,
            "history": state.history, "stopped": state.stopped,
            "param_groups": state.optimizer.state_dict()["param_groups"]}
    tensors = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    files.make_folder(os.path.dirname(path))
    files.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"state": json.dumps(meta)}))


def restore(state, path, config, runs, pack):
    """The saved pack into `state`, after checking that it is the same pack trained with the same arguments."""
    tensors, saved = load_checkpoint(path)
    check_same_run(path, saved, comparable(config) | {"runs": runs, "pack": pack})
    if tensors["prompt"].dim() == 2:  # a checkpoint of one run, as tpv wrote them before packs
        tensors = {k: v[None] if v.dim() == 2 else v for k, v in tensors.items()}
        saved |= {k: [saved[k]] for k in ("best_loss", "best_step", "history")}
    if not torch.equal(tensors["init"], state.inits.cpu()):  # e.g. a source prompt of --init a+b retrained since
        raise ResumeError(f"--resume: the initial prompts differ from the checkpoint's ({path}); rerun with the "
                          f"original --init and prompts, or drop --resume and pass --force to start over")
    device = state.prompts.device
    with torch.no_grad():
        state.prompts.copy_(tensors["prompt"])
    state.best_prompts = tensors["best_prompt"].to(device)
    state.optimizer.load_state_dict({"state": {0: {k[4:]: v for k, v in tensors.items() if k.startswith("adam")}},
                                     "param_groups": saved["param_groups"]})
    torch.set_rng_state(tensors["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in tensors:  # a checkpoint written on the CPU has none
        torch.cuda.set_rng_state(tensors["rng_cuda"], device)
    for key in ("step", "epoch", "next_batch", "best_loss", "best_step", "history"):
        setattr(state, key, saved[key])
    state.stopped = {int(r): why for r, why in saved.get("stopped", {}).items()}
    state.rng = tensors["rng_cpu"]


def check_same_run(path, saved, now):
    then = saved["args"] | {"model": os.path.normpath(saved["args"].get("model", "")),
                            "runs": saved.get("runs", now["runs"]), "pack": saved.get("pack", now["pack"])}
    if then.get("precision") == "fp16":  # tpv no longer trains in fp16 (T5 overflows in it)
        raise ResumeError(f"{path} was written by a --precision fp16 run, which tpv no longer trains; start over "
                          f"with --force (without --resume), in bf16 or fp32")
    k = next((k for k in now if k in then and then[k] != now[k]), None)
    if k is not None:
        raise ResumeError(f"--resume with different arguments: {k} was {then[k]!r}, now {now[k]!r}; rerun with "
                          f"the original arguments, or drop --resume and pass --force to start over")


def load_checkpoint(path):
    """-> (tensors, state); a truncated or foreign file is one clear line."""
    try:
        with safe_open(path, "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            state = checked_state(json.loads((f.metadata() or {}).get("state", "null")))
        missing = sorted({"prompt", "init", "best_prompt", "rng_cpu"} - set(tensors))
        if missing:
            raise ValueError(f"it has no {missing[0]} tensor")
        return tensors, state
    except (SafetensorError, OSError, ValueError) as e:
        raise unreadable(path, e) from None
