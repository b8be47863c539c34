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


def paper_splits(task, canonical, seed=SEED):
    """{split: rows} of the original distribution -> the paper's {train, validation, test}."""
    if "train" not in canonical or task.heldout not in canonical:
        missing = "train" if "train" not in canonical else task.heldout
        raise DataError(f"{task.name}: the prepared data has no {missing} split, which the paper's split rule "
                        f"needs; prepare the full distribution (python tpv.py download-data {task.name})")
    train, heldout = canonical["train"], canonical[task.heldout]
    pick = lambda rows, idx: [rows[i] for i in idx]
    if task.split_rule == "large":
        # 1,000 as in the paper; at most a fifth of train for the small samples used in tests and quick runs
        n_val = min(LARGE_VALIDATION, len(train) // 5)
        val, rest = stratified_take(strata(task, train), n_val, seed)
        return {"train": pick(train, rest), "validation": pick(train, val), "test": heldout}
    val, test = stratified_take(strata(task, heldout), len(heldout) // 2, seed)
    return {"train": train, "validation": pick(heldout, val), "test": pick(heldout, test)}


def few_shot(task, train, shots, seed=SEED):
    """A stratified subset of `shots` training examples; the same for every origin (it depends on the seed only)."""
    if shots > len(train):
        raise DataError(f"{task.name}: {shots} shots asked, but train has only {len(train)} examples")
    taken, _ = stratified_take(strata(task, train), shots, seed)
    return [train[i] for i in taken]
