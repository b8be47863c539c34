"""
Packed runs: the runs of one `train` command (origins x initialisations) trained together, R at a time, in one
pass over the frozen model (train.py's loop), then evaluated together and written one by one, each exactly as
the same run alone writes it (runs.py's layout), so that every later command sees ordinary runs.

    command = command_runs(task, shots, origins, inits, flags, out)   # every run the command names, checked
    todo = to_train(command, force)                                   # without the finished ones
    written, failures = train_packs(todo, command, pack, model, ...)  # chunk, check, train, evaluate, write

A pack's checkpoint is named after the runs of its chunk (support/resume.py; chunks are cut from the command's
whole run list, so a chunk keeps its file whichever of its runs are finished), and a resume must find the same
runs there. Every check (checkpoints, initial prompts) is made before the first pack trains.
"""
import contextlib
import dataclasses
import os
from contextlib import ExitStack
from typing import NamedTuple

import numpy as np
import torch

import data
import evaluation
import families
import runs
import train
from support import devices
from support import files
from support import resume


class Run(NamedTuple):
    config: train.TrainConfig
    paths: runs.RunPaths
    label: str  # origin_<i>/<name>: how checkpoints and records name a run


def depends_on_origin(init):
    """origin and task[+task] inits start from origin_i; the others start from the same prompt on every origin."""
    return not (init in ("random", "vocab") or init.startswith("text:") or runs.is_prompt_file(init))


def command_runs(task, shots, origins, inits, flags, out, name=None, family=families.DEFAULT):
    """Every run of `train TASK --origins ... --init ... [--init ...]`, inits outer and origins inner, with the
    recipe of the model's family (its module)."""
    check_tasks(task)
    if len(origins) > 1:
        fixed = [i for i in inits if not depends_on_origin(i)]
        if fixed:
            raise runs.RunError(f"--init {fixed[0]} does not depend on the origin (random, vocab, text: and prompt "
                                f"files do not): with --origins {','.join(map(str, origins))} the same start would "
                                f"be trained {len(origins)} times; give one origin (--origin)")
    if name is not None and len(origins) * len(inits) > 1:
        raise runs.RunError(f"--name names one run, but this command makes {len(origins) * len(inits)}; drop "
                            f"--name (each run is named from its task, shots and init)")
    made = []
    for init in inits:
        for origin in origins:
            config = train.recipe(task, shots, family, **flags, origin=origin, init=init)
            run = runs.run_name(task, shots, init, name, config.prompt_len)
            made.append(Run(config, runs.run_paths(out, config.model, origin, run), f"origin_{origin}/{run}"))
    labels = [r.label for r in made]
    twice = next((label for label in labels if labels.count(label) > 1), None)
    if twice:
        raise runs.RunError(f"two --init values give the same run {twice} (its files would be written twice); "
                            f"give each init once")
    return made


def check_tasks(task):
    """An unknown task (of a comma list) is one line, before anything else."""
    for each in task.split(","):
        data.get_task(each)


def to_train(command, force):
    """The runs still to train (all of them with --force); refuses a prompt file that is no run's result."""
    held = {label for labels in pack_checkpoints(command).values() for label in labels or []}
    todo = []
    for run in command:
        finished = os.path.exists(run.paths.record)
        if not force and not finished and os.path.exists(run.paths.prompt) and run.label not in held:
            raise runs.RunError(f"{run.paths.prompt} exists without its record {os.path.basename(run.paths.record)};"
                                f" pass --force to train again")
        if force or not finished:
            todo.append(run)
    if not todo:
        if len(command) == 1:
            raise runs.RunError(f"{command[0].paths.record} exists: this run is finished (pass --force to train "
                                f"again)")
        raise runs.RunError(f"all {len(command)} runs of this command are finished (pass --force to train them "
                            f"again)")
    return todo


# -----------------------------------------------------------------------------
# pack checkpoints

def pack_checkpoints(command):
    """{checkpoint path: labels of the runs it holds} of the packs of the command's model, once checkpoints of the
    command's runs in the layout before pack checkpoints are moved to their pack's name."""
    folder = runs.model_folder(out_of(command[0]), command[0].config.model)
    resume.adopt_old_checkpoints(folder, [r.paths.old_checkpoint for r in command])
    return resume.pack_checkpoints(folder)


def stored_pack_size(command):
    """The --pack a checkpoint of these runs was written with (None: none)."""
    labels = {r.label for r in command}
    for path, held in pack_checkpoints(command).items():
        if labels & set(held or []):
            return resume.read_state(path).get("pack")
    return None


def default_pack(todo, command, model, tokenizer, device):
    """The largest pack whose training step fits the memory budget (the family's largest_pack), from the longest
    training example of the task (the prompt included). One run, or zero-shot runs (no training): the whole
    command."""
    config = todo[0].config
    if len(todo) == 1 or config.shots == 0:
        return len(command)
    source, target = 1, 1
    for name in config.task.split(","):
        tokens = data.split_tokens(data.get_task(name), ["train"], tokenizer, config.data_dir,
                                   shots=config.shots)["train"][0]
        if len(data.lengths(tokens)):
            source = max(source, int(data.lengths(tokens).max()))
            target = max(target, int(np.diff(tokens["target_offsets"]).max()))
    return families.of(model).largest_pack(model.config, config.batch_size, source + config.prompt_len, target,
                                           devices.weights_dtype(config.precision, device),
                                           devices.memory_budget(device))


def chunks(command, pack):
    """The command's runs cut into consecutive chunks of `pack` (by position, finished or not)."""
    return [command[i:i + pack] for i in range(0, len(command), pack)]


def plan_packs(todo, command, pack, resuming, force):
    """-> ([(runs of a pack, its checkpoint)], checkpoints to delete before training): every check of every
    pack's checkpoint, before any pack trains. A checkpoint is deleted (--force) only when every run it holds is
    trained again by this command: another pack's progress is never lost."""
    wanted, found = {r.label for r in todo}, pack_checkpoints(command)
    folder = runs.model_folder(out_of(command[0]), command[0].config.model)
    plan, stale = [], []
    for chunk in chunks(command, pack):
        pending = [r for r in chunk if r.label in wanted]
        # named after the chunk's runs, finished or not (a pack killed between its runs' writes keeps its file);
        # a checkpoint moved from the older layout is named after the runs it held, the chunk's unfinished ones
        names = [resume.pack_checkpoint(folder, [r.label for r in runs_]) for runs_ in (chunk, pending) if runs_]
        checkpoint = next((name for name in names if name in found), names[0])
        if checkpoint in found and found[checkpoint] is None:
            resume.read_state(checkpoint)  # this pack's own checkpoint is unreadable: one line naming it
        held = found.get(checkpoint, [])
        if not pending:  # every run of the chunk is finished: a checkpoint left by a kill after the last write
            stale += [checkpoint] if checkpoint in found and not set(held) - {r.label for r in chunk} else []
            continue
        if checkpoint in found:
            by_label = {r.label: r for r in chunk}
            if resuming:  # the pack it holds, as it started
                if set(held) - set(by_label) or {r.label for r in pending} - set(held):
                    raise resume.ResumeError(f"--resume with different arguments: {checkpoint} holds the runs "
                                              f"{', '.join(held)}; rerun with the original --origins, --init and "
                                              f"--pack, or drop --resume and pass --force to start over")
                pending = [by_label[label] for label in held]
            elif not force:
                raise runs.RunError(f"{checkpoint} exists: continue with --resume, or start over with --force")
            else:
                stale.append(checkpoint)
        for path, others in found.items():  # another pack's checkpoint holding one of these runs
            overlap = sorted({r.label for r in pending} & set(others or []))
            if path != checkpoint and overlap:
                if not force:
                    raise runs.RunError(f"{path} is the checkpoint of a pack of {len(others)} runs holding "
                                        f"{overlap[0]}; resume it with the command that started it (the same "
                                        f"--origins, --init and --pack, and --resume), or pass --force to start "
                                        f"over")
                stale.append(path)
        plan.append((pending, checkpoint))
    for path in stale:
        outside = sorted(set(found[path]) - wanted - {r.label for r in command if os.path.exists(r.paths.record)})
        if outside:
            raise runs.RunError(f"{path} holds runs this command does not train ({outside[0]}); resume that pack with "
                                f"the command that started it, or delete the file to start over")
    return plan, sorted(set(stale))


# -----------------------------------------------------------------------------
# training packs

def train_packs(todo, command, pack, model, tokenizer, device, scoring, resuming, force, log):
    """Trains the runs of `todo`, `pack` at a time, and writes each one's files. -> (runs written, [(run, reason)]
    of the runs that stopped (non-finite), whose reason is in a failure record beside them)."""
    plan, stale = plan_packs(todo, command, pack, resuming, force)
    inits = {r.label: runs.resolve_init(r.config, model, tokenizer, out_of(r)) for pending, _ in plan
             for r in pending}  # every initial prompt, before the first pack trains
    for pending, _ in plan:
        lengths = sorted({inits[r.label].shape[0] for r in pending})
        if len(lengths) > 1:
            raise runs.RunError(f"the initial prompts of one pack have different lengths ({lengths[0]} and "
                                f"{lengths[-1]} vectors; a prompt file given to --init?); train them one at a time")
    for path in stale:
        if os.path.exists(path):
            os.remove(path)  # starting over: a later --resume must not find the old state
    folder = os.path.dirname(plan[0][1]) if plan else None
    if folder:
        files.make_folder(folder)  # the checkpoints' folder: a file in its place is one line now, not after training
    written, failures = [], []
    wanted = {r.label for r in todo}
    for pending, checkpoint in plan:
        done, stopped = train_chunk(pending, checkpoint, inits, wanted, pack, model, tokenizer, device, scoring,
                                    resuming, log)
        written, failures = written + done, failures + stopped
    with contextlib.suppress(OSError):
        os.rmdir(folder)  # when no checkpoint is left in it
    return written, failures


def train_chunk(pending, checkpoint, inits, wanted, pack, model, tokenizer, device, scoring, resuming, log):
    first = pending[0].config  # the recipe the pack shares (each run's origin and init are in `labels`)
    tasks = [data.get_task(name) for name in first.task.split(",")]
    stacked = torch.stack([inits[r.label] for r in pending])  # (R, n, d)
    labels = [r.label for r in pending]
    if len(pending) > 1:
        log(f"pack of {len(pending)} runs: {', '.join(labels)}")
    state = train.train(first, model, tokenizer, tasks, stacked, checkpoint, labels, resuming, log=log, pack=pack)

    # --- evaluation of every run that finished, packed; then each run's files, one by one
    done = state.running()
    options = evaluation.options(scoring, first.precision, device)
    results = {t.name: evaluation.evaluate_all(model, tokenizer, t, test_split(t, tokenizer, first.data_dir),
                                               state.best_prompts[done], **options) for t in tasks} if done else {}
    written, failures = [], []
    for i, run in enumerate(pending):
        if run.label not in wanted:
            continue  # finished before this resume: its files stay as they are
        if i in state.stopped:
            reason = state.stopped[i]["reason"]
            files.write_json(run.paths.failure, {"reason": reason, **state.record(i), **about(run, pending, pack,
                                                                                             scoring, device)})
            failures.append((run, reason))
            continue
        j = done.index(i)
        record = state.record(i, seconds=state.seconds)
        runs.finish(run.paths, state.best_prompts[i], stacked[i],
                    runs.run_meta(model, run.config, record, stacked.shape[1]),
                    {**about(run, pending, pack, scoring, device), **record,
                     "test": {name: per_run[j] for name, per_run in results.items()}})
        written.append(run)
        if os.path.exists(run.paths.failure):
            os.remove(run.paths.failure)  # an earlier try failed; this one did not
    if os.path.exists(checkpoint):
        os.remove(checkpoint)  # every run of the pack is written: nothing left to resume
    return written, failures


def about(run, pending, pack, scoring, device):
    """What a run's JSON records besides its results: the arguments of the same run alone, its pack, and where
    it ran."""
    return {"arguments": dataclasses.asdict(run.config) | {"scoring": scoring, "device": str(device),
                                                           "out": out_of(run), "name": os.path.basename(run.label)},
            "pack": {"runs": [r.label for r in pending], "pack": pack},
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def out_of(run):
    """--out, from a run's prompt path out/<model>/origin_<i>/<name>.safetensors."""
    return os.path.dirname(os.path.dirname(os.path.dirname(run.paths.prompt)))


def test_split(task, tokenizer, data_dir):
    return data.split_tokens(task, ["test"], tokenizer, data_dir)["test"]


def locks(command):
    """One writer per run: a lock on each run's prompt file while the command runs."""
    stack = ExitStack()
    for run in command:
        stack.enter_context(files.exclusive(run.paths.prompt))
    return stack
