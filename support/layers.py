"""
The small pieces both model families use (model_t5.py, model_llama.py): the RMS norm, the additive attention mask
the soft prompt's shape check, and setting
every dropout of a model (T5 has them; Llama has none).
"""
import torch
import torch.nn as nn


class RMSNorm(nn.Module):
    """T5LayerNorm: scale only, no mean subtraction and no bias; the variance is always taken in fp32."""

    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)  # (B, T, 1)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):  # modeling_t5.py casts back only for half weights
            x = x.to(self.weight.dtype)
        return self.weight * x


def rows_per_prompt(batch, prompts):
    """A batch of B rows for each of R prompts (R, n, d) (None: no prompt, R = 1): every tensor of the batch repeated
    R times, prompt-major (row r*B + b is example b with prompt r), and each row's prompt (R*B, n, d) or None."""
    R, B = 1 if prompts is None else prompts.shape[0], next(iter(batch.values())).shape[0]
    rows = {k: v.repeat(R, 1) for k, v in batch.items()}  # (R*B, ...)
    return rows, None if prompts is None else prompts.repeat_interleave(B, dim=0)


def additive_mask(allowed, dtype):
    """bool mask (True = may attend) -> 0 / most negative float, added to attention scores as HF does."""
    return (1.0 - allowed.to(dtype)) * torch.finfo(dtype).min


def check_prompt(prompt, batch_size, d):
    """A soft prompt is (n, d), or (B, n, d) with one prompt per example (or one for all)."""
    ok = prompt.dim() == 2 or (prompt.dim() == 3 and prompt.shape[0] in (1, batch_size))
    if not ok or prompt.shape[-1] != d:
        raise ValueError(f"prompt must be (n, {d}) or ({batch_size}, n, {d}), got {tuple(prompt.shape)}")
    return prompt


def set_dropout(model, rate):
    """Every dropout of the model at `rate` (config.json's dropout_rate is the default; 0 for exact comparisons)."""
    if not 0 <= rate < 1:
        raise ValueError(f"dropout rate {rate} is not in [0, 1)")
    for module in model.modules():
        if hasattr(module, "dropout_rate"):
            module.dropout_rate = rate
