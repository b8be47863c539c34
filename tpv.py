"""
tpv: Task Prompt Vectors (Belanec et al., arXiv 2408.01119) on a hand-written T5.

    python tpv.py download t5-base              # fetch a model from the Hugging Face hub (or find it cached)
    python tpv.py info --model t5-base          # its config, parameter counts, dtype and where it came from
    python tpv.py convert DIR                   # pytorch_model.bin -> model.safetensors, once
    python tpv.py download-data mnli            # fetch MNLI's original files, check, prepare the cache
    python tpv.py prepare mnli --from DIR       # or prepare from original files already on disk

Every command takes --offline (or TPV_OFFLINE=1) to forbid downloads. A user's mistake ends with one line on
stderr and exit status 2.
"""
import argparse
import glob
import json
import os
import pickle
import re
import sys
import time

import torch

import data
import experiments
import hub
import metrics
import model_t5
import prompts
import train

USER_ERRORS = (model_t5.CheckpointError, hub.DownloadError, data.DataError, prompts.PromptError,
               train.TrainingError)


# -----------------------------------------------------------------------------
# commands

def cmd_download(args):
    # a complete copy in models/ or in the Hugging Face cache is used as it is; otherwise fetch what is missing
    folder = hub.resolve_model(args.name, args.models_dir, allow_download=not args.offline)
    print(f"{args.name}: {folder}")


def cmd_info(args):
    path = hub.resolve_model(args.model, args.models_dir, allow_download=not args.offline)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = model_t5.load_t5(path, dtype=dtype)
    cfg = model.config
    count = lambda module: sum(p.numel() for p in module.parameters())
    embedding = model.shared.weight.numel()
    print(f"model      {args.model}\nloaded     {os.path.abspath(path)}\ndtype      {model.dtype}")
    print("config     " + ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items()))
    print(f"parameters {count(model):,} in all: embedding {embedding:,}, encoder {count(model.encoder) - embedding:,}, "
          f"decoder {count(model.decoder) - embedding:,}"
          + ("" if cfg.tie_word_embeddings else f", lm_head {model.lm_head.weight.numel():,}"))
    print(f"tied head  {cfg.tie_word_embeddings} (decoder output rescaled by d_model**-0.5: {cfg.tie_word_embeddings})")


def cmd_convert(args):
    """pytorch_model.bin -> model.safetensors, reading the pickle with weights_only=True (no code runs)."""
    from safetensors.torch import save_file
    source = os.path.join(args.dir, "pytorch_model.bin")
    target = os.path.join(args.dir, "model.safetensors")
    if not os.path.exists(source):
        raise model_t5.CheckpointError(f"{source}: no such file (sharded .bin checkpoints are not supported)")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)  # never runs pickled code
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise model_t5.CheckpointError(f"{source}: not a plain state dict of tensors "
                                       f"({str(e).splitlines()[0]})") from None
    # safetensors refuses tensors that share memory (tied embeddings): keep one copy per storage
    seen, tensors = set(), {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            tensors[name] = t.contiguous()
    save_file(tensors, target + ".tmp", metadata={"format": "pt"})
    os.replace(target + ".tmp", target)
    print(f"wrote {target}: {len(tensors)} tensors ({len(state) - len(tensors)} tied duplicates dropped)")


def tokenizer_for(args):
    folder = hub.resolve_tokenizer(args.model, args.models_dir, allow_download=not args.offline)
    return model_t5.load_tokenizer(folder)


def cmd_prepare(args):
    task = data.get_task(args.task)
    print(data.prepare(task, args.source, args.data_dir, args.skip_bad_rows, tokenizer_for(args)))


def cmd_download_data(args):
    names = list(data.TASKS) if args.task == "all" else [data.get_task(args.task).name]
    tokenizer = tokenizer_for(args)
    for name in names:
        folder, checked = data.download_task(name, args.data_dir)
        print(f"{name}: original files in {folder} ({checked} checked against published sha256)")
        print(data.prepare(data.TASKS[name], folder, args.data_dir, args.skip_bad_rows, tokenizer))


# -----------------------------------------------------------------------------
# training and evaluation

def pick_device(choice, local_rank=0):
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise train.TrainingError("--device cuda, but PyTorch sees no CUDA device (use --device cpu)")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def eval_options(args, device):
    autocast, _ = train.autocast_for(train.resolve_precision(args.precision, device), device)
    return {"scoring": args.scoring, "device": device, "autocast": autocast}


def model_tag(name):
    return os.path.basename(os.path.normpath(name))


def run_folder(args):
    return os.path.join(args.out, model_tag(args.model), f"origin_{args.origin}")


def load_model(args, device=torch.device("cpu")):
    path = hub.resolve_model(args.model, args.models_dir, allow_download=not args.offline)
    model = model_t5.load_t5(path, device=device)
    if getattr(args, "dropout", None) is not None:
        model_t5.set_dropout(model, args.dropout)
    return model, model_t5.load_tokenizer(path)


def trained_prompt(args, name):
    """The prompt file of a run name (a task, a comma list, a+b) on args' model and origin."""
    path = os.path.join(run_folder(args), f"{name}.safetensors")
    if not os.path.exists(path):
        unknown = [t for t in name.split(",") if t not in data.TASKS]
        hint = (f"{unknown[0]!r} is neither a task ({', '.join(data.TASKS)}) nor a run there" if unknown else
                f"train it with: python tpv.py train {name} --origin {args.origin} --model {args.model}")
        raise prompts.PromptError(f"no trained prompt for {name} on origin {args.origin} ({path}); {hint}")
    return path


def resolve_init(args, model, tokenizer):
    """--init -> (n, d) starting prompt. Default: the paper's origin_<--origin>."""
    spec, n = args.init, args.prompt_len
    if spec in ("origin", "random", "vocab") or spec.startswith("text:"):
        return prompts.initial_prompt(model, tokenizer, f"origin:{args.origin}" if spec == "origin" else spec, n,
                                      args.seed)
    if os.path.exists(spec) or spec.endswith(".safetensors"):  # continue from a tuned prompt
        prompt, _, meta = prompts.load_prompt(spec)
        prompts.check_fits(spec, prompt, meta, args.model, model.config.d_model)
        return prompt
    # task[+task...]: the origin plus the sum of those tasks' vectors, all trained on this origin
    origin = prompts.initial_prompt(model, tokenizer, f"origin:{args.origin}", n)
    init = origin.clone()
    for name in spec.split("+"):
        path = trained_prompt(args, name)
        prompt, start, meta = prompts.load_prompt(path)
        prompts.check_fits(path, prompt, meta, args.model, model.config.d_model)
        if start.shape != origin.shape or not torch.equal(start, origin):
            raise prompts.PromptError(f"{path} was not trained from origin_{args.origin} with {n} vectors; "
                                      f"task vectors only add on the origin they were computed from")
        init += prompt - start
    return init


def run_name(args):
    if args.name:
        return args.name
    name = args.task + (f"_{args.shots}shots" if args.shots is not None else "")
    if args.init != "origin":
        tag = "text" if args.init.startswith("text:") else os.path.splitext(os.path.basename(args.init))[0]
        name += f"_init-{tag}"
    return name


def write_json(path, record):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)


def print_metrics(table):
    """accuracy (= exact match) and F1 (binary) or macro-F1; for STS-B, Pearson and Spearman (x100)."""
    print(f"{'task':14}{'split':>11}{'examples':>10}{'acc|pearson':>13}{'F1|spearman':>13}{'invalid':>9}")
    for name, (split, m) in table.items():
        f1 = m.get("f1", m.get("macro_f1", m.get("spearman", 0.0)))
        main = m.get("accuracy", m.get("pearson", 0.0))
        print(f"{name:14}{split:>11}{m['examples']:>10,}{100 * main:>13.2f}{100 * f1:>13.2f}{m['invalid']:>9,}")


def cmd_train(args):
    tasks = [data.get_task(n) for n in args.task.split(",")]
    rank, _, local_rank = train.distributed()
    model, tokenizer = load_model(args, pick_device(args.device, local_rank))
    if args.epochs is None:  # the paper: 10 epochs, 50 for TREC (it underfits)
        args.epochs = 50 if args.task == "trec" else 10
    if args.shots:
        args.max_steps = args.max_steps or train.FEW_SHOT_STEPS
        args.batch_size = args.batch_size or train.few_shot_batch_size(args.shots)
    args.batch_size = args.batch_size or 32
    name = run_name(args)
    folder = run_folder(args)
    paths = {k: os.path.join(folder, name + ext) for k, ext in
             (("prompt", ".safetensors"), ("json", ".json"), ("checkpoint", ".ckpt.safetensors"))}
    if os.path.exists(paths["prompt"]) and not args.force:
        raise train.TrainingError(f"{paths['prompt']} exists: this run is finished (pass --force to train again)")
    if os.path.exists(paths["checkpoint"]) and not (args.resume or args.force):
        raise train.TrainingError(f"{paths['checkpoint']} exists: continue with --resume, or start over with --force")
    if args.force and not args.resume and os.path.exists(paths["checkpoint"]):
        os.remove(paths["checkpoint"])
    os.makedirs(folder, exist_ok=True)
    init = resolve_init(args, model, tokenizer)
    log = print if rank == 0 else (lambda *a, **k: None)
    if args.shots == 0:  # zero-shot: the initial prompt is the result
        record, best = {"steps": 0, "history": []}, init
        prompts.save_prompt(paths["prompt"], init, init, {"task": args.task, "model": args.model,
                                                          "origin": str(args.origin), "init": args.init,
                                                          "shots": "0"})
    else:
        record, best = train.train(args, model, tokenizer, tasks, init, paths, log)
    if rank != 0:
        return
    results = {}
    device = next(model.parameters()).device
    for task in tasks:  # the paper's report: test metrics of the best prompt
        tokens, rows = data.split_tokens(task, ["test"], tokenizer, args.data_dir)["test"]
        results[task.name] = ("test", train.evaluate(model, task, tokens, rows, tokenizer, best.to(device),
                                                     **eval_options(args, device))[0])
    write_json(paths["json"], {"arguments": vars(args) | {"run": None}, **record,
                               "test": {k: m for k, (_, m) in results.items()}})
    if os.path.exists(paths["checkpoint"]):
        os.remove(paths["checkpoint"])  # finished: the prompt file and the record are what stays
    print(f"wrote {paths['prompt']} and {paths['json']}")
    print_metrics(results)


def cmd_eval(args):
    task = data.get_task(args.task)
    device = pick_device(args.device)
    model, tokenizer = load_model(args, device)
    path = args.prompt if os.path.exists(args.prompt) or args.prompt.endswith(".safetensors") \
        else trained_prompt(args, args.prompt)
    prompt, _, meta = prompts.load_prompt(path)
    prompts.check_fits(path, prompt, meta, args.model, model.config.d_model)
    tokens, rows = data.split_tokens(task, [args.split], tokenizer, args.data_dir)[args.split]
    started = time.time()
    result, _ = train.evaluate(model, task, tokens, rows, tokenizer, prompt.to(device),
                               max_new_tokens=args.max_new_tokens, **eval_options(args, device))
    print(f"{path}: {len(rows):,} examples in {time.time() - started:.1f}s ({args.scoring})")
    print_metrics({task.name: (args.split, result)})
    print(json.dumps(result))


# -----------------------------------------------------------------------------
# task prompt vectors: the paper's experiments and interchange

def cmd_add(args):
    tasks = [data.get_task(n) for n in args.tasks]
    if args.lam != "auto" and not 0.0 <= float_or_fail(args.lam, "--lambda") <= 1.0:
        raise prompts.PromptError(f"--lambda {args.lam} is out of range: use auto or a number in [0, 1] (the paper "
                                  f"sweeps 0, 0.05, ..., 1)")
    device = pick_device(args.device)
    model, tokenizer = load_model(args, device)
    files = [trained_prompt(args, t.name) for t in tasks]
    for f in files:
        p, _, meta = prompts.load_prompt(f)
        prompts.check_fits(f, p, meta, args.model, model.config.d_model)
    origin = prompts.load_prompt(files[0])[1]
    summed = prompts.add(*[prompts.vector(f) for f in files])  # checks model, shape and origin
    kw = eval_options(args, device)
    if args.lam == "auto":
        lam, sweep = experiments.lambda_sweep(model, tokenizer, tasks, origin, summed, args.data_dir, **kw)
    else:
        lam, sweep = float(args.lam), []
    combined = prompts.apply(origin, summed, lam)
    name = "+".join(t.name for t in tasks)
    record = {"tasks": [t.name for t in tasks], "lambda": lam, "sweep": sweep, "test": {}, "single": {},
              "relative": {}, "metrics": {}}
    print(f"{name}: lambda {lam:.2f}" + (" (best mean validation score)" if sweep else ""))
    print(f"{'task':14}{'sum':>8}{'single':>8}{'ratio':>8}")
    for task, path in zip(tasks, files):
        test = data.split_tokens(task, ["test"], tokenizer, args.data_dir)["test"]
        result = experiments.score(model, tokenizer, task, test, combined.to(device), **kw)
        single = experiments.score(model, tokenizer, task, test, prompts.load_prompt(path)[0].to(device), **kw)
        ours, alone = metrics.headline(task, result), metrics.headline(task, single)
        record["test"][task.name], record["single"][task.name] = ours, alone
        record["relative"][task.name] = ours / alone if alone else 0.0
        record["metrics"][task.name] = result
        print(f"{task.name:14}{100 * ours:8.1f}{100 * alone:8.1f}{record['relative'][task.name]:8.2f}")
    out = os.path.join(run_folder(args), name)
    prompts.save_prompt(out + ".safetensors", combined, origin, {"task": name, "model": args.model,
                                                                 "origin": str(args.origin), "lambda": str(lam)})
    write_json(out + ".json", record)
    print(f"wrote {out}.safetensors and {out}.json")


def float_or_fail(text, option):
    try:
        return float(text)
    except ValueError:
        raise prompts.PromptError(f"{option} {text!r} is not a number") from None


def trained_origins(args, name):
    root = os.path.join(args.out, model_tag(args.model))
    found = sorted(int(m.group(1)) for p in glob.glob(os.path.join(root, "origin_*", f"{name}.safetensors"))
                   if (m := re.search(r"origin_(\d+)", p)))
    wanted = [int(o) for o in args.origins.split(",")] if args.origins else found
    missing = [o for o in wanted if o not in found]
    if missing:
        raise prompts.PromptError(f"no trained prompt for {name} on origin {missing[0]} (under {root}); train it "
                                  f"with: python tpv.py train {name} --origin {missing[0]}")
    return wanted


def cmd_cross_origin(args):
    device = pick_device(args.device)
    model, tokenizer = load_model(args, device)
    path = os.path.join(args.results, "cross_origin.json")
    table = experiments.read_json(path) if os.path.exists(path) else {}
    print(f"{'task':14}{'original':>16}{'mixed':>16}")
    for name in args.tasks:
        task = data.get_task(name)
        origins = trained_origins(args, name)
        if len(origins) < 2:
            raise prompts.PromptError(f"cross-origin needs {name} trained on at least 2 origins, found {origins}")
        files = {o: os.path.join(args.out, model_tag(args.model), f"origin_{o}", f"{name}.safetensors")
                 for o in origins}
        pairs = experiments.cross_origin(model, tokenizer, task, files, origins, args.data_dir,
                                         **eval_options(args, device))
        original, mixed = experiments.original_vs_mixed(pairs)
        table[name] = {"original": original, "mixed": mixed, "pairs": {f"{i},{j}": v for (i, j), v in pairs.items()}}
        print(f"{name:14}{original[0]:9.1f} ± {original[1]:4.1f}{mixed[0]:9.1f} ± {mixed[1]:4.1f}")
    os.makedirs(args.results, exist_ok=True)
    write_json(path, table)
    print(f"wrote {path}")


def cmd_similarity(args):
    root = os.path.join(args.out, model_tag(args.model))
    tasks = args.tasks or sorted({os.path.basename(p)[:-12] for p in glob.glob(os.path.join(root, "origin_*",
                                                                                                "*.safetensors"))
                                  if os.path.basename(p)[:-12] in data.TASKS})
    if not tasks:
        raise prompts.PromptError(f"no trained task prompts under {root}; train some with: python tpv.py train TASK")
    found = {}
    for name in tasks:
        data.get_task(name)
        for o in trained_origins(args, name):
            prompt, init, _ = prompts.load_prompt(os.path.join(root, f"origin_{o}", f"{name}.safetensors"))
            found[name, o] = (prompt, init)
    shapes = {p.shape for p, _ in found.values()}
    if len(shapes) > 1:
        raise prompts.PromptError(f"prompts of different shapes cannot be compared: {sorted(map(tuple, shapes))}")
    origins = sorted({o for _, o in found})
    kinds = {"prompts": {k: p for k, (p, _) in found.items()}, "vectors": {k: p - i for k, (p, i) in found.items()}}
    print(experiments.write_similarity(args.results, kinds, list(tasks), origins))
    print(f"wrote {args.results}/similarity_*.{{csv,svg}} and similarity.md")


def cmd_report(args):
    print(f"wrote {experiments.write_report(args.out, args.model, args.results)}")


def cmd_import(args):
    """Official released prompts (.bin: {"prompt_embeddings": T} or a bare tensor) or a PEFT prompt-tuning
    adapter -> a tpv prompt file whose init is origin_<--origin> (PEFT never saves the init)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    source, n = args.file, args.prompt_len
    try:
        if os.path.isdir(source) or source.endswith(".safetensors"):
            folder = source if os.path.isdir(source) else os.path.dirname(source)
            config = json.load(open(os.path.join(folder, "adapter_config.json")))
            if config.get("peft_type") != "PROMPT_TUNING":
                raise prompts.PromptError(f"{folder}: a {config.get('peft_type')} adapter, not prompt tuning")
            n = config["num_virtual_tokens"]
            tensor = load_file(os.path.join(folder, "adapter_model.safetensors"))["prompt_embeddings"]
        else:
            loaded = torch.load(source, map_location="cpu", weights_only=True)  # never runs pickled code
            tensor = loaded["prompt_embeddings"] if isinstance(loaded, dict) else loaded
    except (OSError, KeyError, ValueError, SafetensorError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        reason = str(e).splitlines()[0]
        raise prompts.PromptError(f"{source}: not an official prompt file or PEFT prompt-tuning adapter "
                                  f"({reason})") from None
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2 or tensor.shape[0] < n:
        raise prompts.PromptError(f"{source}: expected a (rows >= {n}, d) tensor")
    prompt = tensor[:n].detach().float()  # seq2seq prompts hold encoder rows first (then PEFT's unused decoder rows)
    model, tokenizer = load_model(args)
    prompts.check_fits(source, prompt, {}, args.model, model.config.d_model)
    init = prompts.initial_prompt(model, tokenizer, f"origin:{args.origin}", n)
    path = os.path.join(run_folder(args), f"{args.task}.safetensors")
    prompts.save_prompt(path, prompt, init, {"task": args.task, "model": args.model, "origin": str(args.origin),
                                             "imported_from": os.path.abspath(source)})
    print(f"wrote {path} ({n} x {prompt.shape[1]}; init: origin_{args.origin})")


def cmd_export(args):
    """A prompt file -> a PEFT prompt-tuning adapter that PEFT loads (encoder rows only)."""
    from safetensors.torch import save_file
    path = args.file if os.path.exists(args.file) else trained_prompt(args, args.file)
    prompt, _, meta = prompts.load_prompt(path)
    os.makedirs(args.peft, exist_ok=True)
    save_file({"prompt_embeddings": prompt.contiguous()}, os.path.join(args.peft, "adapter_model.safetensors"),
              metadata={"format": "pt"})
    config = {"peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": prompt.shape[0],
              "token_dim": prompt.shape[1], "num_transformer_submodules": 1, "prompt_tuning_init": "RANDOM",
              "base_model_name_or_path": meta.get("model", args.model), "inference_mode": True}
    write_json(os.path.join(args.peft, "adapter_config.json"), config)
    print(f"wrote {args.peft}/adapter_model.safetensors and adapter_config.json (the init is not part of PEFT's format)")


def cmd_tiny_model(args):
    """A small random T5 in Hugging Face's format with a real vocabulary, for smoke runs (run.sh --quick)."""
    from safetensors.torch import save_file
    cfg = model_t5.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    torch.manual_seed(args.seed)
    model = model_t5.T5(cfg)
    os.makedirs(args.dir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.named_parameters()}, os.path.join(args.dir, "model.safetensors"),
              metadata={"format": "pt"})  # named_parameters lists the tied embedding once, as shared.weight
    write_json(os.path.join(args.dir, "config.json"), {"model_type": "t5", **cfg.to_dict()})
    with open(args.spiece, "rb") as f, open(os.path.join(args.dir, "spiece.model"), "wb") as g:
        g.write(f.read())
    print(f"wrote a random tiny T5 to {args.dir}")


# -----------------------------------------------------------------------------
# command line

def fail(message):
    """A user's mistake: one line on stderr, exit status 2, no traceback."""
    print(f"tpv: error: {message}", file=sys.stderr)
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        fail(f"{message} (see: python {self.prog.replace('tpv', 'tpv.py', 1)} --help)")


def at_least(low, convert=int):
    """An argparse type: a number >= low, so that --batch-size 0 is a one-line error, not a crash later."""
    def parse(text):
        value = convert(text)  # a ValueError here becomes argparse's "invalid int value: 'x'"
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value
    parse.__name__ = convert.__name__  # argparse names the type in its message
    return parse


def dropout_rate(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def add_run_options(p):
    p.add_argument("--model", default="t5-base", help="a model folder or a hub name (default: t5-base)")
    p.add_argument("--origin", type=int, default=0, help="which of the paper's 10 origins (default 0)")
    p.add_argument("--prompt-len", type=at_least(1), default=50, help="soft prompt vectors (default 50)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on the CPU")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--scoring", choices=["generate", "rank"], default="generate",
                   help="greedy generation (the paper) or ranking the label words by log-probability")
    p.add_argument("--out", default="runs", help="where runs live (default: runs)")
    p.add_argument("--data-dir", default=data.data_dir(), help="the data cache (default: data_cache, or $TPV_DATA)")


def build_parser():
    parser = Parser(prog="tpv", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", default=os.environ.get("TPV_MODELS", "models"),
                        help="where downloaded models live (default: models, or $TPV_MODELS)")
    common.add_argument("--offline", action="store_true", default=hub.offline(),
                        help="never download (also TPV_OFFLINE=1)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("download", parents=[common], help="fetch a T5 model from the Hugging Face hub")
    p.add_argument("name", help="t5-small, t5-base, t5-large, google/t5-v1_1-base, google/flan-t5-base, org/name")
    p.set_defaults(run=cmd_download)

    p = sub.add_parser("info", parents=[common], help="show a model's config and parameter counts")
    p.add_argument("--model", default="t5-base", help="a model folder or a hub name (default: t5-base)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.set_defaults(run=cmd_info)

    data_options = argparse.ArgumentParser(add_help=False)
    data_options.add_argument("--data-dir", default=data.data_dir(), help="the data cache (default: data_cache, "
                              "or $TPV_DATA)")
    data_options.add_argument("--skip-bad-rows", action="store_true",
                              help="skip malformed rows (reported with counts) instead of stopping at the first")
    data_options.add_argument("--model", default="t5-base", help="whose tokenizer measures the inputs")

    p = sub.add_parser("prepare", parents=[common, data_options],
                       help="build a task's data cache from its original files already on disk")
    p.add_argument("task", help=", ".join(data.TASKS))
    p.add_argument("--from", dest="source", required=True, help="folder holding the original distribution files")
    p.set_defaults(run=cmd_prepare)

    p = sub.add_parser("download-data", parents=[common, data_options],
                       help="fetch a task's original distribution, check it, and prepare it")
    p.add_argument("task", help="a task name or 'all': " + ", ".join(data.TASKS))
    p.set_defaults(run=cmd_download_data)

    p = sub.add_parser("train", parents=[common],
                       help="tune a soft prompt on a task (a comma list: multi-task)")
    p.add_argument("task", help="a task, or a comma list for the multi-task SPoT baseline: mnli,qnli")
    add_run_options(p)
    p.add_argument("--init", default="origin", help="origin (default), random, vocab, text:\"...\", a prompt file, "
                   "or task[+task...]: the origin plus those tasks' vectors")
    p.add_argument("--shots", type=at_least(0), default=None, help="few-shot: N stratified training examples (0: no training)")
    p.add_argument("--max-steps", type=at_least(1), default=None, help="default: epochs x batches (few-shot: 1000)")
    p.add_argument("--epochs", type=at_least(1), default=None, help="default 10 (TREC 50)")
    p.add_argument("--batch-size", type=at_least(1), default=None, help="default 32 (few-shot: 2 / 8 / 16)")
    p.add_argument("--lr", type=at_least(0, float), default=0.3)
    p.add_argument("--weight-decay", type=at_least(0, float), default=1e-5)
    p.add_argument("--warmup", type=at_least(0), default=500)
    p.add_argument("--eval-every", type=at_least(1), default=100)
    p.add_argument("--log-every", type=at_least(1), default=10)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dropout", type=dropout_rate, default=None, help="override the model's dropout_rate (default: as "
                   "config.json, 0.1 for T5)")
    p.add_argument("--name", default=None, help="the run's file name (default: from task, shots and init)")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument("--force", action="store_true", help="train again even if the run exists")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("eval", parents=[common], help="evaluate a prompt on a task's split")
    p.add_argument("task")
    p.add_argument("--prompt", required=True, help="a prompt file, or a run name under --out (e.g. mnli)")
    p.add_argument("--split", choices=["train", "validation", "test"], default="test")
    p.add_argument("--max-new-tokens", type=at_least(1), default=None,
                   help="generation length (default: the longest label + 4; the paper: 128)")
    add_run_options(p)
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("add", parents=[common], help="add task prompt vectors: origin + lambda * (sum of vectors)")
    p.add_argument("tasks", nargs="+")
    p.add_argument("--lambda", dest="lam", default="auto", help="auto (sweep 0..1 on validation) or a number")
    add_run_options(p)
    p.set_defaults(run=cmd_add)

    p = sub.add_parser("cross-origin", parents=[common], help="origin_i + vector_j for every pair of origins")
    p.add_argument("tasks", nargs="+")
    p.add_argument("--origins", default=None, help="comma list (default: every origin with a trained prompt)")
    p.add_argument("--results", default="results")
    add_run_options(p)
    p.set_defaults(run=cmd_cross_origin)

    p = sub.add_parser("similarity", parents=[common], help="cosine similarity of task prompts and vectors")
    p.add_argument("tasks", nargs="*")
    p.add_argument("--origins", default=None)
    p.add_argument("--results", default="results")
    add_run_options(p)
    p.set_defaults(run=cmd_similarity)

    p = sub.add_parser("report", parents=[common], help="write results/README.md from the runs")
    p.add_argument("--results", default="results")
    add_run_options(p)
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("import", parents=[common], help="an official .bin prompt or a PEFT adapter -> a prompt file")
    p.add_argument("file")
    p.add_argument("--task", required=True, help="the run name to write (runs/<model>/origin_<i>/<task>.safetensors)")
    add_run_options(p)
    p.set_defaults(run=cmd_import)

    p = sub.add_parser("export", parents=[common], help="a prompt file -> a PEFT prompt-tuning adapter")
    p.add_argument("file", help="a prompt file or a run name")
    p.add_argument("--peft", required=True, help="the adapter folder to write")
    add_run_options(p)
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("tiny-model", help="write a small random T5 (for smoke runs)")
    p.add_argument("dir")
    p.add_argument("--spiece", required=True, help="a T5 sentencepiece vocabulary (spiece.model)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_tiny_model)

    p = sub.add_parser("convert", help="write model.safetensors beside a folder's pytorch_model.bin")
    p.add_argument("dir")
    p.set_defaults(run=cmd_convert)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except USER_ERRORS as e:
        fail(str(e))
    except KeyboardInterrupt:
        print("tpv: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
