"""
The paper's split rules and few-shot subsets (spec: paper §4; the official `AbstractTask.get`), seeded and
stratified, with numpy's PCG64 generator so that every machine draws the same examples.

- large sets: 1,000 validation examples stratified from train; the rest is train; the original
  validation/test split (task.heldout) is the test set.
- small sets: train unchanged; the held-out split halved, stratified, into validation and test.
"""
import numpy as np

from .tasks import DataError

SEED = 42
LARGE_VALIDATION = 1000


def strata(task, rows):
    """The class of each example; STS-B's scores are binned to the nearest integer."""
    return np.array([round(r[task.label_field]) if not task.labels else r[task.label_field] for r in rows])


def stratified_take(labels, n_take, seed=SEED):
    """Indices (taken, rest): n_take examples with every class in proportion (largest remainders get the
    leftover places), each class shuffled by its own draw from one seeded generator."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = n_take * counts / len(labels)
    quota = np.floor(exact).astype(int)
    leftover = n_take - quota.sum()
    quota[np.argsort(-(exact - quota), kind="stable")[:leftover]] += 1
    taken = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    taken = np.sort(np.concatenate(taken)) if taken else np.array([], dtype=int)
    rest = np.setdiff1d(np.arange(len(labels)), taken)
    return taken, rest


def split_indices(task, canonical, seed=SEED):
    """{split: rows} of the original distribution -> the paper's {train, validation, test}, each given as
    (original split name, indices into it), so that token caches of the original splits can be reused."""
    if "train" not in canonical or task.heldout not in canonical:
        missing = "train" if "train" not in canonical else task.heldout
        raise DataError(f"{task.name}: the prepared data has no {missing} split, which the paper's split rule "
                        f"needs; prepare the full distribution (python tpv.py download-data {task.name})")
    train, heldout = canonical["train"], canonical[task.heldout]
    if task.split_rule == "large":
        # 1,000 as in the paper; at most a fifth of train for the small samples used in tests and quick runs
        n_val = min(LARGE_VALIDATION, len(train) // 5)
        val, rest = stratified_take(strata(task, train), n_val, seed)
        return {"train": ("train", rest), "validation": ("train", val),
                "test": (task.heldout, np.arange(len(heldout)))}
    val, test = stratified_take(strata(task, heldout), len(heldout) // 2, seed)
    return {"train": ("train", np.arange(len(train))), "validation": (task.heldout, val),
            "test": (task.heldout, test)}


def paper_splits(task, canonical, seed=SEED):
    """The paper's {train, validation, test} as lists of examples."""
    return {split: [canonical[name][i] for i in idx]
            for split, (name, idx) in split_indices(task, canonical, seed).items()}


def few_shot_indices(task, train, shots, seed=SEED):
    """Indices of a stratified subset of `shots` training examples; the same for every origin (seed only).
    Each class gets its share rounded down, and the places left go to the largest remainders: with fewer
    shots than classes, the most frequent classes get one example each (a tie goes to the lower label) and
    the rest none, so 1 shot of MNLI is one example of its largest class. 0 shots is an empty subset."""
    if not 0 <= shots <= len(train):
        raise DataError(f"{task.name}: {shots} shots asked, but train has only {len(train)} examples; ask for 0 "
                        f"to {len(train)} shots")
    taken, _ = stratified_take(strata(task, train), shots, seed)
    return taken


def few_shot(task, train, shots, seed=SEED):
    return [train[i] for i in few_shot_indices(task, train, shots, seed)]
