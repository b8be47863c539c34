"""
tpv: Task Prompt Vectors (Belanec et al., arXiv 2408.01119) on a hand-written T5.

    python tpv.py train mnli                    # tune a soft prompt on MNLI from origin_0 (the paper's recipe)
    python tpv.py eval mnli --prompt mnli       # evaluate a trained prompt (a run name or a prompt file)
    python tpv.py add mnli qnli                 # origin + lambda * (tau_mnli + tau_qnli), lambda swept on validation

    python tpv.py cross-origin mnli             # the paper's experiments on trained prompts: origin_i + tau_j,
    python tpv.py similarity                    #   cosine similarity of prompts and vectors,
    python tpv.py report                        #   and results/README.md beside the paper's numbers

    python tpv.py download t5-base              # fetch a model from the Hugging Face hub (or find it cached)
    python tpv.py download-data mnli            # fetch MNLI's original files, check, prepare the cache
    python tpv.py prepare mnli --from DIR       # or prepare from original files already on disk
    python tpv.py info --model t5-base          # a model's config, parameter counts and where it came from
    python tpv.py import FILE --task mnli       # an official .bin prompt or a PEFT adapter -> a prompt file
    python tpv.py export mnli --peft DIR        # a prompt file -> a PEFT prompt-tuning adapter

Every command takes --offline (or TPV_OFFLINE=1) to forbid downloads. A user's mistake ends with one line on
stderr and exit status 2; nothing finished is replaced without --force.
"""
import dataclasses
import json
import os
import sys
import time

import torch

import cli
import data
import evaluation
import experiments
import families
import metrics
import packs
import prompts
import runs
import train
from support import bpe, chat, devices, files, hub, interchange, interrupts, layers, resume, weights
from train import TrainConfig

USER_ERRORS = (weights.CheckpointError, bpe.TokenizerError, chat.ChatError, hub.DownloadError, data.DataError,
               prompts.PromptError, train.TrainingError, evaluation.EvaluationError, runs.RunError, files.FileError,
               devices.DeviceError, resume.ResumeError, families.FamilyError)


# -----------------------------------------------------------------------------
# training and evaluation

def cmd_train(args):
    origins, inits = args.origins or [args.origin], args.init or [TrainConfig.init]
    packs.check_tasks(args.task)  # before the model is looked for (or downloaded)
    family = families.at(hub.resolve_model(args.model, args.models_dir, allow_download=not args.offline))
    families.check_options(family, {name: getattr(args, name) for name in families.family_options()})
    command = packs.command_runs(args.task, args.shots, origins, inits, recipe_flags(args), args.out, args.name,
                                 family)
    device = devices.pick_device(args.device)
    with packs.locks(command):  # one writer per run
        todo = packs.to_train(command, args.force)
        for run in command:
            if run not in todo:
                print(f"skipped {run.label}: finished ({run.paths.record})")
        model, tokenizer = load_model(args, device, command[0].config.dropout)
        model.checkpointing = args.checkpointing  # the same numbers, less memory: not part of the recipe
        stored = args.resume and packs.stored_pack_size(command)  # a resumed pack keeps its size
        pack = args.pack or stored or packs.default_pack(todo, command, model, tokenizer, device)
        if len(todo) > 1:
            why = "--pack" if args.pack else "the checkpoint's --pack" if stored else "the memory budget's largest pack"
            print(f"{len(todo)} runs, {min(pack, len(todo))} at a time ({why})")
        written, failures = packs.train_packs(todo, command, pack, model, tokenizer, device, args.scoring,
                                              args.resume, args.force, print)
    for run in written:
        record = files.read_json(run.paths.record)
        print(f"wrote {run.paths.prompt} and {run.paths.record}")
        print(metrics.table({name: ("test", m) for name, m in record["test"].items()}))
    if failures:
        run, reason = failures[0]
        raise train.TrainingError(f"{len(failures)} of {len(todo)} run(s) stopped: {run.label}: {reason}; see "
                                  f"{run.paths.failure}" + (" and the others' .failed.json" if len(failures) > 1
                                                            else ""))


def cmd_eval(args):
    task, device = data.get_task(args.task), devices.pick_device(args.device)
    model, tokenizer = load_model(args, device)
    paths = [runs.prompt_file(spec, args.out, args.model, args.origin) for spec in args.prompt]
    loaded = [runs.load_fitting(path, args.model, model)[0] for path in paths]
    lengths = sorted({p.shape[0] for p in loaded})
    if len(lengths) > 1:
        raise prompts.PromptError(f"the prompts have different lengths ({lengths[0]} and {lengths[-1]} vectors); "
                                  f"evaluate them in separate commands")
    prompts_ = torch.stack(loaded)  # (R, n, d), evaluated together
    split = data.split_tokens(task, [args.split], tokenizer, args.data_dir)[args.split]
    started = time.time()
    results = evaluation.evaluate_all(model, tokenizer, task, split, prompts_, **evaluation.options(
        args.scoring, args.precision, device, args.max_new_tokens))
    print(f"{', '.join(paths)}: {len(split[1]):,} examples in {time.time() - started:.1f}s ({args.scoring})")
    for path, result in zip(paths, results):
        print(metrics.table({task.name if len(paths) == 1 else path: (args.split, result)}))
        print(json.dumps(result))


def cmd_add(args):
    tasks = [data.get_task(name) for name in args.tasks]
    if len({t.name for t in tasks}) != len(tasks) or len(tasks) < 2:
        raise runs.RunError(f"add needs two or more different tasks, got {' '.join(args.tasks)} (a single task's "
                            f"prompt is its own run: python tpv.py eval {tasks[0].name} --prompt {tasks[0].name})")
    device = devices.pick_device(args.device)
    model, tokenizer = load_model(args, device)
    name = "+".join(t.name for t in tasks)
    paths = runs.run_paths(args.out, args.model, args.origin, name)
    with files.exclusive(paths.prompt):
        files.refuse_existing(paths.record, args.force, "finished addition")
        sources = [runs.prompt_file(t.name, args.out, args.model, args.origin) for t in tasks]
        for path in sources:
            runs.load_fitting(path, args.model, model)
        combined, origin, record = experiments.addition(model, tokenizer, tasks, sources, args.lam, args.data_dir,
                                                        **evaluation.options(args.scoring, args.precision, device))
        print(f"{name}: lambda {record['lambda']:.2f}" + (" (best mean validation score)" if record["sweep"] else ""))
        print(experiments.addition_table(record))
        meta = runs.prompt_meta(model, args.model, name, args.origin, "origin", prompt_len=origin.shape[0],
                                **{"lambda": record["lambda"]})
        runs.finish(paths, combined, origin, meta, record)
    print(f"wrote {paths.prompt} and {paths.record}")


# -----------------------------------------------------------------------------
# the paper's other experiments on trained prompts

def cmd_cross_origin(args):
    path = os.path.join(args.results, "cross_origin.json")
    table = files.read_json(path) if os.path.exists(path) else {}  # a broken table fails before any evaluation
    if not isinstance(table, dict):
        raise files.FileError(f"{path}: not a cross-origin table; delete it and run again")
    tasks = [data.get_task(name) for name in args.tasks]
    found = {t.name: runs.trained_origins(args.out, args.model, t.name, args.origins) for t in tasks}
    for name, origins in found.items():
        if len(origins) < 2:
            raise prompts.PromptError(f"cross-origin needs {name} trained on at least 2 origins, found {origins}")
    device = devices.pick_device(args.device)
    model, tokenizer = load_model(args, device)
    print(f"{'task':14}{'original':>16}{'mixed':>16}")
    for task in tasks:
        sources = {o: runs.prompt_file(task.name, args.out, args.model, o) for o in found[task.name]}
        table[task.name] = entry = experiments.cross_origin(model, tokenizer, task, sources, args.data_dir,
                                                            **evaluation.options(args.scoring, args.precision, device))
        (o_mean, o_std), (m_mean, m_std) = entry["original"], entry["mixed"]
        print(f"{task.name:14}{o_mean:9.1f} ± {o_std:4.1f}{m_mean:9.1f} ± {m_std:4.1f}")
    files.write_json(path, table)
    print(f"wrote {path}")


def cmd_similarity(args):
    tasks = [data.get_task(name).name for name in args.tasks] or runs.trained_tasks(args.out, args.model)
    if not tasks:
        raise prompts.PromptError(f"no trained task prompts under {runs.model_folder(args.out, args.model)}; train "
                                  f"some with: python tpv.py train TASK")
    print(experiments.similarity(args.out, args.model, tasks, args.origins, args.results))
    print(f"wrote {args.results}/similarity_*.{{csv,svg}} and similarity.md")


def cmd_report(args):
    print(f"wrote {experiments.write_report(args.out, args.model, args.results)}")


# -----------------------------------------------------------------------------
# prompts from and to other tools

def cmd_import(args):
    name = runs.check_name(args.task)
    family = families.at(hub.resolve_model(args.model, args.models_dir, allow_download=not args.offline))
    n = args.prompt_len or train.recipe(args.task, family=family).prompt_len  # the rows of an official .bin to keep
    prompt, meta = interchange.read_foreign_prompt(args.file, n)
    model, _ = load_model(args)
    prompts.check_fits(args.file, prompt, {"family": model.family, **meta}, args.model, model)
    paths = runs.run_paths(args.out, args.model, args.origin, name)
    files.refuse_existing(paths.prompt, args.force, "prompt file")
    init = prompts.origin_prompt(model, args.origin, prompt.shape[0])  # PEFT never saves the init
    prompts.save_prompt(paths.prompt, prompt, init, runs.prompt_meta(
        model, args.model, name, args.origin, "origin", prompt_len=prompt.shape[0],
        imported_from=os.path.abspath(args.file)))
    print(f"wrote {paths.prompt} ({prompt.shape[0]} x {prompt.shape[1]}; init: origin_{args.origin})")


def cmd_export(args):
    path = runs.prompt_file(args.file, args.out, args.model, args.origin)
    prompt, _, meta = prompts.load_prompt(path)
    if not len(prompt):
        raise prompts.PromptError(f"{path} holds no prompt vectors (the model without a prompt, a baseline): PEFT "
                                  f"has no adapter for that; export a tuned prompt")
    interchange.write_adapter(args.peft, prompt, meta.get("model", args.model), meta["family"], args.force)
    print(f"wrote {args.peft}/adapter_model.safetensors and adapter_config.json (the init is not part of PEFT's "
          f"format)")


# -----------------------------------------------------------------------------
# models and data

def cmd_download(args):
    # a complete copy in models/ or in the Hugging Face cache is used as it is; otherwise fetch what is missing
    print(f"{args.name}: {hub.resolve_model(args.name, args.models_dir, allow_download=not args.offline)}")


def cmd_download_data(args):
    names = list(data.TASKS) if args.task == "all" else [data.get_task(args.task).name]
    tokenizer = tokenizer_for(args)
    for name in names:
        cache = data.task_dir(data.TASKS[name], args.data_dir)
        if data.is_prepared(cache) and not args.force:  # skipped, so that `all` goes on with the others
            print(f"{name}: already prepared in {cache} (pass --force to download and prepare it again)")
            continue
        folder, checked = data.download_task(name, args.data_dir, allow_download=not args.offline)
        print(f"{name}: original files in {folder} ({checked} checked against published sha256)")
        print(data.prepare(data.TASKS[name], folder, args.data_dir, args.skip_bad_rows, tokenizer, force=args.force))


def cmd_prepare(args):
    task = data.get_task(args.task)
    print(data.prepare(task, args.source, args.data_dir, args.skip_bad_rows, tokenizer_for(args), force=args.force))


def cmd_info(args):
    if args.grid:
        return print_grid(args)
    if args.family:
        raise families.FamilyError("--family goes with --grid (info reads the family from config.json)")
    path = hub.resolve_model(args.model, args.models_dir, allow_download=not args.offline)
    model = families.load(path, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype])
    table = model.input_embedding()  # T5 keeps it in fp32 whatever the dtype (model_t5.FLOAT32_WEIGHTS)
    print(f"model      {args.model}\nloaded     {os.path.abspath(path)}\nfamily     {model.family}\n"
          f"dtype      {model.dtype}" + (f" (input embedding {table.dtype})" if table.dtype != model.dtype else ""))
    print("config     " + ", ".join(f"{k}={v}" for k, v in model.config.to_dict().items()))
    print("\n".join(families.of(model).describe(model)))


def print_grid(args):
    """What run.sh asks before it builds its grid, as lines of `KEY VALUE`: the model's family, its family-only
    options and the paper's grid for it (the family's GRID). The family comes from the model's config.json where
    tpv finds one without downloading (a folder, models/NAME, the Hugging Face cache), else from --family, else a
    hub name is taken for the default family (T5, the paper's); nothing is loaded."""
    has_config = lambda folder: os.path.isfile(os.path.join(folder, "config.json"))
    found = hub.find_local(args.model, args.models_dir, has_config)
    if found:
        family = families.at(found)
        if args.family and families.BY_NAME[args.family] is not family:
            raise families.FamilyError(f"{args.model} is a {family.NAME} model (its config.json), not --family "
                                       f"{args.family}")
    elif args.family:
        family = families.BY_NAME[args.family]
    elif hub.is_hub_name(args.model):
        family = families.DEFAULT
    else:
        raise hub.DownloadError(f"{args.model}: no such model folder, and not a hub name like t5-base or "
                                f"meta-llama/Llama-3.1-8B-Instruct")
    print(f"family {family.FAMILY}\nname {family.NAME}\nsource "
          f"{'config.json' if found else '--family' if args.family else 'default'}\norigins {family.GRID['origins']}"
          f"\ntasks {','.join(family.GRID['tasks'])}\noptions {' '.join(family.OPTIONS)}")


def cmd_convert(args):
    path, kept, dropped = weights.convert_bin(args.dir, args.force)
    print(f"wrote {path}: {kept} tensors ({dropped} tied duplicates dropped)")


def cmd_tiny_model(args):
    """A small random model in Hugging Face's format with a real vocabulary, for smoke runs (run.sh --quick): T5
    with a sentencepiece file (--spiece), or Llama with a tokenizer.json (--family llama --tokenizer)."""
    files.check_model_folder(args.dir, args.force)
    model, write = families.BY_NAME[args.family].tiny_model(args.spiece or args.tokenizer, args.seed)
    # a failed write leaves no half-written model for run.sh to trust
    files.atomic_write(os.path.normpath(args.dir), write, folder=True)
    print(f"wrote a random tiny {model.family} model to {args.dir}")


# -----------------------------------------------------------------------------
# shared pieces

def load_model(args, device=torch.device("cpu"), dropout=None):
    """The model (its family from config.json: families.py) and its tokenizer, in devices.weights_dtype: bf16 on
    CUDA (the default precision there), as the paper's LLM runs (an 8B model in fp32 would not fit a 40 GB GPU);
    the prompt stays fp32."""
    path = hub.resolve_model(args.model, args.models_dir, allow_download=not args.offline)
    model = families.load(path, device, devices.weights_dtype(getattr(args, "precision", "auto"), device))
    if dropout is not None:
        layers.set_dropout(model, dropout)  # --dropout (families.check_options: T5 only)
    return model, families.at(path).load_tokenizer(path)


def tokenizer_for(args):
    return families.load_tokenizer(hub.resolve_tokenizer(args.model, args.models_dir, allow_download=not args.offline))


def recipe_flags(args):
    """The TrainConfig fields the user set on the command line (argparse leaves the others None)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if f.name not in ("task", "shots", "origin", "init") and getattr(args, f.name, None) is not None}


# -----------------------------------------------------------------------------
# command line: parsing, then one function per command

COMMANDS = {"train": cmd_train, "eval": cmd_eval, "add": cmd_add, "cross-origin": cmd_cross_origin,
            "similarity": cmd_similarity, "report": cmd_report, "import": cmd_import, "export": cmd_export,
            "download": cmd_download, "download-data": cmd_download_data, "prepare": cmd_prepare, "info": cmd_info,
            "convert": cmd_convert, "tiny-model": cmd_tiny_model}


def main(argv=None):
    args = cli.parse_args(argv, __doc__)  # cli.py: every option of every command
    terminated = []
    previous = interrupts.handle_sigterm(lambda number, frame: interrupts.on_terminate(terminated))
    try:
        COMMANDS[args.command](args)
    except USER_ERRORS as e:
        if terminated:  # SIGTERM, handled as Ctrl-C (train saved its checkpoint): the signal's exit status
            interrupts.leave_terminated(str(e))
        cli.fail(str(e))
    except KeyboardInterrupt:
        if terminated:
            interrupts.leave_terminated("nothing was left half-written; run the same command again (train: with "
                                        "--resume)")
        print("tpv: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        interrupts.handle_sigterm(previous)


if __name__ == "__main__":
    main()
