"""
The paper's metrics (official `metrics/metrics.py`), computed on label words; pure Python and numpy.

Predictions that are not a label word are "invalid": counted and reported. For binary F1 an invalid prediction
counts as the wrong label (the official `binary_reverse`); for macro-F1 it is a miss for the gold class; for
STS-B it becomes -1 (official). Exact match compares whole strings (the official code cut both to 16
characters first).
"""
import numpy as np


def accuracy(predictions, golds):
    return float(np.mean([p == g for p, g in zip(predictions, golds)])) if golds else 0.0


def f1_for(positive, predictions, golds):
    tp = sum(p == positive and g == positive for p, g in zip(predictions, golds))
    fp = sum(p == positive and g != positive for p, g in zip(predictions, golds))
    fn = sum(p != positive and g == positive for p, g in zip(predictions, golds))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def binary_f1(predictions, golds, labels):
    """F1 of the positive label labels[1]; an invalid prediction is replaced by the label that is not gold."""
    flipped = [p if p in labels else labels[1 - labels.index(g)] for p, g in zip(predictions, golds)]
    return f1_for(labels[1], flipped, golds)


def macro_f1(predictions, golds, labels):
    return float(np.mean([f1_for(label, predictions, golds) for label in labels]))


def ranks(x):
    """Average ranks (ties share the mean rank), for Spearman's rho."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        r[tied] = r[tied].mean()
    return r


def pearson(x, y):
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x, y):
    return pearson(ranks(x), ranks(y))


def to_score(text):
    try:
        return float(text)
    except ValueError:
        return -1.0


def task_metrics(task, predictions, golds):
    """All metrics of one task from predicted and gold label words (strings)."""
    result = {"examples": len(golds)}
    if not task.labels:  # STS-B: correlation of the numbers
        result["invalid"] = sum(to_score(p) == -1.0 and p.strip() != "-1" for p in predictions)
        scores, truth = [to_score(p) for p in predictions], [float(g) for g in golds]
        result.update(pearson=pearson(scores, truth), spearman=spearman(scores, truth))
        return result
    labels = list(task.labels)
    result["invalid"] = sum(p not in labels for p in predictions)
    result["accuracy"] = result["exact_match"] = accuracy(predictions, golds)
    if len(labels) == 2:
        result["f1"] = binary_f1(predictions, golds, labels)
    else:
        result["macro_f1"] = macro_f1(predictions, golds, labels)
    return result


def headline(task, result, kind="exact_match"):
    """The number the paper reports: exact match in its addition and cross-origin tables, F1 (macro-F1 for
    multi-class tasks) in its few-shot tables; Pearson for STS-B in both."""
    if kind not in ("exact_match", "f1"):
        raise ValueError(f"kind must be exact_match or f1, got {kind!r}")
    if not task.labels:
        return result["pearson"]
    if kind == "exact_match":
        return result["exact_match"]
    return result["f1"] if "f1" in result else result["macro_f1"]


def table(results):
    """{name: (split, metrics)} -> a printable table: exact match (= accuracy) and F1 (binary) or macro-F1; for
    STS-B, Pearson and Spearman (x100)."""
    lines = [f"{'task':14}{'split':>11}{'examples':>10}{'acc|pearson':>13}{'F1|spearman':>13}{'invalid':>9}"]
    for name, (split, m) in results.items():
        main = m.get("exact_match", m.get("pearson"))
        second = m.get("f1", m.get("macro_f1", m.get("spearman")))
        lines.append(f"{name:14}{split:>11}{m['examples']:>10,}{100 * main:>13.2f}{100 * second:>13.2f}"
                     f"{m['invalid']:>9,}")
    return "\n".join(lines)
