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
import os
import sys

import torch

import data
import hub
import model_t5

USER_ERRORS = (model_t5.CheckpointError, hub.DownloadError, data.DataError)


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
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling error of any kind means: not a plain tensor file
        raise model_t5.CheckpointError(f"{source}: not a plain state dict of tensors ({e})") from None
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
# command line

def fail(message):
    """A user's mistake: one line on stderr, exit status 2, no traceback."""
    print(f"tpv: error: {message}", file=sys.stderr)
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        fail(f"{message} (see: python {self.prog.replace('tpv', 'tpv.py', 1)} --help)")


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
