"""
Where the work runs and in what precision: the device, the weights' dtype and autocast for a --precision, the
memory a step may take, and inference in batches that shrink when a GPU runs out of memory.

    device = pick_device("auto")                        # cuda when PyTorch sees one
    autocast = autocast_for("bf16", device)             # a context factory: `with autocast(): ...`
    dtype = weights_dtype("bf16", device)               # bf16 weights on CUDA, fp32 on the CPU
"""
import os
from contextlib import nullcontext

import numpy as np
import torch

PRECISIONS = ("auto", "bf16", "fp32")  # fp16 is refused (cli.py): T5 overflows in it, and bf16 is what T5 trained in


class DeviceError(ValueError):
    """A device or precision this machine cannot give; the message is one line."""


def pick_device(choice):
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda, but PyTorch sees no CUDA device (use --device cpu)")
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_precision(precision, device):
    """auto: bf16 on GPUs that have it (T5 was trained in bf16), fp32 elsewhere (the paper ran fp32)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def autocast_for(precision, device):
    """The autocast context factory of a --precision. The prompt and the optimizer stay fp32; the weights are in
    weights_dtype (with bf16 weights, autocast changes nothing but the ops it runs in fp32)."""
    if resolve_precision(precision, device) == "fp32":
        return nullcontext
    return lambda: torch.autocast(device.type, torch.bfloat16)


def weights_dtype(precision, device):
    """The dtype a frozen model is loaded in for a --precision: bf16 on CUDA when it computes in bf16 (its
    activations then stay bf16 between the layers, as Hugging Face's model in bf16 computes; under autocast over
    fp32 weights, the casts and fp32 elementwise work took most of a t5-base step on an H100: docs/speed.md),
    float32 otherwise."""
    bf16 = resolve_precision(precision, device) == "bf16"
    return torch.bfloat16 if bf16 and device.type == "cuda" else torch.float32


def bf16_is_emulated(device):
    """True on a CPU without native bf16 (AVX512-BF16 or AMX): there PyTorch emulates bf16 matrix products, about
    100x slower than fp32 (docs/speed.md), so a bf16 run would crawl."""
    if device.type != "cpu" or not os.path.exists("/proc/cpuinfo"):
        return False  # CUDA has bf16 units; elsewhere (macOS) we cannot tell, so we do not warn
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    return not {"avx512_bf16", "amx_bf16"} & set(flags)


def memory_budget(device):
    """Bytes a step's activations may take: 80 % of the free GPU memory (what the driver has free and what
    PyTorch's allocator holds unused), or half of the available RAM."""
    if device.type == "cuda":
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(0.8 * (torch.cuda.mem_get_info(device)[0] + unused))
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # macOS has no SC_AVPHYS_PAGES, Windows no sysconf
            available = 8 * 2 ** 30  # unknown: assume 8 GiB free
    return available // 2


def in_inference_batches(lengths, runs, rows, work):
    """Calls work(idx) over the examples of `lengths`, shortest first (less padding), about rows // runs at a
    time (each example is repeated for the runs). rows comes from the family's inference_rows, an estimate: where
    the GPU runs out of memory, the slice is halved and tried again, down to one example."""
    order = np.argsort(lengths, kind="stable")
    step, start = max(1, rows // runs), 0
    while start < len(order):
        idx = order[start:start + step]
        try:
            work(idx)
            start += len(idx)
            continue
        except torch.cuda.OutOfMemoryError:
            if step == 1:
                raise
        step //= 2  # out of the except block: the failed batch's tensors are gone, so the cache can be emptied
        torch.cuda.empty_cache()
