"""
The paper's experiments on trained prompts (spec: paper §6): zero-shot addition of task prompt vectors with the
lambda sweep, cross-origin transfer, cosine similarity, and the report that gathers every table and plot
(results/README.md) beside the paper's numbers. The arithmetic itself is prompts.py's; the commands in tpv.py
load models and call these.
"""
import csv
import glob
import io
import os

import numpy as np
import torch

import data
import evaluation
from support import files
import metrics
from support import plots
import prompts
import runs

LAMBDAS = [round(0.05 * k, 2) for k in range(21)]  # np.arange(0.0, 1.05, 0.05), the official sweep
SHOTS = [0, 5, 10, 25, 50, 100, 250, 500, 750, 1000]

# the paper's numbers (spec: paper §6), for the side-by-side tables
PAPER_SINGLE = {"dbpedia": 99.1, "mnli": 85.4, "qnli": 93.3, "sst2": 93.8, "trec": 95.5, "yelp_polarity": 97.2}
PAPER_ADDITION = {("mnli", "qnli"): (84.7, 90.1, .85), ("qnli", "sst2"): (93.0, 93.4, .65),
                  ("qnli", "yelp_polarity"): (92.1, 96.0, .40), ("sst2", "yelp_polarity"): (91.2, 96.2, .49),
                  ("dbpedia", "qnli"): (96.7, 78.8, .38), ("dbpedia", "mnli"): (77.3, 58.7, .74),
                  ("mnli", "yelp_polarity"): (61.4, 94.8, .51), ("qnli", "trec"): (92.9, 14.9, .60),
                  ("mnli", "sst2"): (85.0, 8.7, .82), ("dbpedia", "yelp_polarity"): (0.7, 94.9, .84)}
PAPER_CROSS_ORIGIN = {"qnli": (93.3, 93.2), "mnli": (85.4, 85.3), "trec": (95.5, 26.5), "dbpedia": (99.1, 99.0),
                      "sst2": (93.8, 93.2), "yelp_polarity": (97.2, 97.1)}
PAPER_CROSS_ORIGIN_LLAMA = {"mnli": (89.7, 89.7), "qqp": (84.6, 84.6), "qnli": (92.0, 92.0), "sst2": (95.9, 96.0),
                            "stsb": (89.9, 89.8), "mrpc": (87.7, 88.1), "rte": (89.7, 89.4), "cola": (87.3, 87.6),
                            "trec": (95.8, 96.0), "dbpedia": (99.2, 99.2), "yelp_polarity": (98.6, 98.6)}
# LLaMA-3.1-8B-Instruct's single-task prompts: the "original" column above (each prompt on its own origin)
PAPER_SINGLE_LLAMA = {task: original for task, (original, _) in PAPER_CROSS_ORIGIN_LLAMA.items()}
PAPER_SIMILARITY = (  # same task, different origins (paper §6a)
    "Paper, same task across origins: flattened TPV cosine (v1, 10 origins) DBPedia .09, MNLI .09, QNLI .09, "
    "SST2 .10, TREC .06, Yelp .08 (cross-task .01–.05); token-mean cosine (v3, 3 origins), task prompts / TPVs: "
    "CoLA .81/.79, DBPedia .89/.88, MNLI .81/.78, MRPC .81/.78, QNLI .76/.72, QQP .88/.87, RTE .81/.77, "
    "SST2 .80/.78, STS-B .78/.67, TREC .80/.70, Yelp .88/.87.")
PAPER_FEWSHOT = {  # F1 at 0 / 100 shots: random, TPV sum (paper §6b)
    "scitail": ((54.9, 75.6), (71.5, 88.1)), "snli": ((46.5, 47.6), (79.2, 80.3)),
    "ag_news": ((0, 50.4), (0, 83.0)), "yahoo": ((0, 27.6), (0, 61.1)), "imdb": ((77.2, 89.4), (90.1, 90.4))}


# -----------------------------------------------------------------------------
# zero-shot addition (paper §6c)

def lambda_sweep(model, tokenizer, tasks, origin, summed, root, lambdas=LAMBDAS, **kw):
    """origin + lam * sum for each lam, scored on every task's validation set; the best lam maximises the mean
    headline metric (exact match; Pearson for STS-B), the first one on ties, as np.argmax picks."""
    validation = {t.name: data.split_tokens(t, ["validation"], tokenizer, root)["validation"] for t in tasks}
    candidates = torch.stack([prompts.apply(origin, summed, lam) for lam in lambdas])  # (L, n, d), evaluated packed
    results = {t.name: evaluation.evaluate_all(model, tokenizer, t, validation[t.name], candidates, **kw)
               for t in tasks}
    sweep = []
    for k, lam in enumerate(lambdas):
        scores = {t.name: metrics.headline(t, results[t.name][k]) for t in tasks}
        sweep.append({"lambda": lam, **scores, "mean": float(np.mean(list(scores.values())))})
    best = max(sweep, key=lambda s: s["mean"])  # max() keeps the first of equal values
    return best["lambda"], sweep


def addition(model, tokenizer, tasks, paths, lam, root, **kw):
    """origin + lam * (tau_a + tau_b + ...) of the tasks' prompt files, lam swept on validation when None, and its
    test scores beside each single-task prompt's. -> (combined prompt, origin, record)"""
    vectors = [prompts.load_vector(p) for p in paths]
    summed = prompts.add(*vectors)  # checks model, shape and origin
    sweep = []
    if lam is None:
        lam, sweep = lambda_sweep(model, tokenizer, tasks, summed.init, summed, root, **kw)
    combined = prompts.apply(summed.init, summed, lam)
    record = {"tasks": [t.name for t in tasks], "lambda": lam, "sweep": sweep, "test": {}, "single": {},
              "relative": {}, "metrics": {}}
    for task, path in zip(tasks, paths):
        test = data.split_tokens(task, ["test"], tokenizer, root)["test"]
        result, single = evaluation.evaluate_all(model, tokenizer, task, test, torch.stack(
            [combined, prompts.load_prompt(path)[0]]), **kw)  # the sum and the task's own prompt, packed
        ours, alone = metrics.headline(task, result), metrics.headline(task, single)
        record["test"][task.name], record["single"][task.name] = ours, alone
        record["relative"][task.name] = ours / alone if alone else 0.0
        record["metrics"][task.name] = result
    return combined, summed.init, record


def addition_table(record):
    lines = [f"{'task':14}{'sum':>8}{'single':>8}{'ratio':>8}"]
    for name in record["tasks"]:
        lines.append(f"{name:14}{100 * record['test'][name]:8.1f}{100 * record['single'][name]:8.1f}"
                     f"{record['relative'][name]:8.2f}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# cross-origin (paper §6a/d): origin_i + tau_j for every pair of trained origins

def cross_origin(model, tokenizer, task, paths, root, **kw):
    """paths: {origin: prompt file}. -> {"original", "mixed", "pairs"}: headline test metrics of origin_i + tau_j,
    i == j (original) and i != j (mixed), mean and std over the pairs."""
    vectors = {o: prompts.load_vector(p) for o, p in paths.items()}
    test = data.split_tokens(task, ["test"], tokenizer, root)["test"]  # read once for all origin pairs
    keys = [(i, j) for i in paths for j in paths]
    mixed = torch.stack([prompts.apply(vectors[i].init, vectors[j], check_origin=False) for i, j in keys])
    pairs = {key: metrics.headline(task, result)  # every pair's prompt evaluated in one packed pass
             for key, result in zip(keys, evaluation.evaluate_all(model, tokenizer, task, test, mixed, **kw))}
    original, mixed = original_vs_mixed(pairs)
    return {"original": original, "mixed": mixed, "pairs": {f"{i},{j}": v for (i, j), v in pairs.items()}}


def original_vs_mixed(table):
    original = [v for (i, j), v in table.items() if i == j]
    mixed = [v for (i, j), v in table.items() if i != j]
    stats = lambda xs: (100 * float(np.mean(xs)), 100 * float(np.std(xs))) if xs else (float("nan"), 0.0)
    return stats(original), stats(mixed)


# -----------------------------------------------------------------------------
# cosine similarity (paper §6a): flattened (v1) and token-averaged (HEAD) definitions

def cosine(a, b, definition):
    if definition == "mean":  # eval_cross_origin.py at HEAD: cosine of the mean over tokens
        a, b = a.mean(0), b.mean(0)
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def similarity_matrix(tensors, tasks, origins, definition):
    """tensors[(task, origin)] -> task x task matrix: mean over origin pairs i != j (cross-origin, as the paper's
    averages), or over i == j when only one origin exists (then the diagonal is 1 by definition)."""
    pairs = [(i, j) for i in origins for j in origins if i != j] or [(o, o) for o in origins]
    matrix = []
    for a in tasks:
        row = []
        for b in tasks:
            values = [cosine(tensors[a, i], tensors[b, j], definition) for i, j in pairs
                      if (a, i) in tensors and (b, j) in tensors]
            row.append(float(np.mean(values)) if values else None)
        matrix.append(row)
    return matrix


def similarity(out, model, tasks, origins, results):
    """Cosine similarity of the task prompts and of their vectors, over every trained origin (or `origins`);
    writes CSV, SVG heatmaps and similarity.md under `results`. Returns the markdown."""
    found = {}
    for name in tasks:
        for o in runs.trained_origins(out, model, name, origins):
            found[name, o] = prompts.load_prompt(runs.run_paths(out, model, o, name).prompt)[:2]  # (prompt, init)
    shapes = {prompt.shape for prompt, _ in found.values()}
    if len(shapes) > 1:
        raise prompts.PromptError(f"prompts of different shapes cannot be compared: {sorted(map(tuple, shapes))}")
    kinds = {"prompts": {k: prompt for k, (prompt, _) in found.items()},
             "vectors": {k: prompts.vector(prompt, init).tau for k, (prompt, init) in found.items()}}
    return write_similarity(results, kinds, list(tasks), sorted({o for _, o in found}))


def write_similarity(out_dir, tensors_by_kind, tasks, origins):
    """CSV, markdown and SVG heatmap for prompts and vectors, flattened and token-mean. Returns the markdown."""
    sections = []
    for kind, tensors in tensors_by_kind.items():
        for definition in ("flat", "mean"):
            matrix = similarity_matrix(tensors, tasks, origins, definition)
            stem = os.path.join(out_dir, f"similarity_{kind}_{definition}")
            csv_text = io.StringIO()
            writer = csv.writer(csv_text)
            writer.writerow(["task"] + tasks)
            for task, row in zip(tasks, matrix):
                writer.writerow([task] + ["" if v is None else f"{v:.4f}" for v in row])
            files.write_text(stem + ".csv", csv_text.getvalue())
            title = f"cosine of task {'prompts' if kind == 'prompts' else 'prompt vectors'} ({definition})"
            files.write_text(stem + ".svg", plots.heatmap(matrix, tasks, tasks, title))
            table = markdown_table(["", *tasks], [[t, *["–" if v is None else f"{v:.2f}" for v in row]]
                                                   for t, row in zip(tasks, matrix)])
            sections.append(f"### {title}\n\n![{title}]({os.path.basename(stem)}.svg)\n\n{table}\n")
    text = "\n".join(sections)
    files.write_text(os.path.join(out_dir, "similarity.md"), text)
    return text


# -----------------------------------------------------------------------------
# the report: every table and plot, beside the paper's numbers

def markdown_table(header, rows):
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def mean_std(values):
    if len(values) == 1:  # one origin: no spread to show
        return f"{100 * values[0]:.1f}"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}" if values else "–"


def single_task_section(model_dir):
    """The tuned prompts (mean ± std over origins) beside the paper's; then each task's baselines, if any."""
    tuned = {}  # task -> [record path per origin]
    for path in sorted(glob.glob(os.path.join(model_dir, "origin_*", "*.json"))):
        if os.path.basename(path)[:-5] in data.TASKS:
            tuned.setdefault(os.path.basename(path)[:-5], []).append(path)
    if not tuned:
        return ""
    text = ["## Single-task prompt tuning\n\nTest exact match (Pearson for STS-B) ×100, mean ± std over origins.\n\n"
            + markdown_table(["task", "origins", "ours", "paper T5-base", "paper LLaMA-3.1-8B"], [
                [t, len(paths), mean_std([headline_of(p, t) for p in paths]), PAPER_SINGLE.get(t, "–"),
                 PAPER_SINGLE_LLAMA.get(t, "–")] for t, paths in sorted(tuned.items())]) + "\n"]
    return "\n".join(text + [baselines_table(model_dir, task) for task in sorted(tuned)])


def headline_of(path, task):
    """A run record's headline test metric (exact match; Pearson for STS-B)."""
    return metrics.headline(data.TASKS[task], files.read_json(path, "test", task))


def baselines_table(model_dir, task):
    """Per origin (run.sh --mini makes these runs): the untuned origin (TASK_0shots), the tuned prompt (TASK), the
    task tuned with another loss (TASK_loss-full, TASK_loss-answer), and the model without a prompt
    (TASK_no-prompt, the same on every origin). "" when the task has no baseline."""
    found = lambda run: {os.path.basename(os.path.dirname(p)): p
                         for p in sorted(glob.glob(os.path.join(model_dir, "origin_*", run + ".json")))}
    no_prompt, untuned, tuned = found(f"{task}_no-prompt"), found(f"{task}_0shots"), found(task)
    others = {os.path.basename(p)[:-5]
              for p in glob.glob(os.path.join(model_dir, "origin_*", f"{task}_loss-*.json"))}
    if not (no_prompt or untuned or others):
        return ""
    columns = {"untuned origin": untuned}
    loss = files.read_json(next(iter(tuned.values())), "arguments").get("loss") if tuned and others else None
    columns["tuned" + (f", --loss {loss}" if loss else "")] = tuned
    for run in sorted(others):  # a loss the tuned runs have too (an earlier --loss) keeps its run name
        label = f"tuned, --loss {run.rsplit('_loss-', 1)[1]}"
        columns[label if label not in columns else f"tuned, {run}"] = found(run)
    values = {label: {o: headline_of(p, task) for o, p in paths.items()} for label, paths in columns.items()}
    tuned_label = next(label for label in columns if label.startswith("tuned"))
    gain = {o: values[tuned_label][o] - u for o, u in values["untuned origin"].items() if o in values[tuned_label]}
    origins = sorted(set().union(*columns.values()))
    rows = [[o, *[f"{100 * values[label][o]:.1f}" if o in values[label] else "–" for label in columns],
             f"{100 * gain[o]:+.1f}" if o in gain else "–"] for o in origins]
    if len(origins) > 1:
        rows.append(["mean ± std", *[mean_std(list(values[label].values())) for label in columns],
                     mean_std(list(gain.values()))])
    alone = (f"; the model without a prompt: {100 * headline_of(next(iter(no_prompt.values())), task):.1f}"
             if no_prompt else "")
    return (f"### {task}: baselines, per origin\n\nTest exact match ×100 of the untuned origin and the tuned prompt "
            f"on each origin{alone}.\n\n" + markdown_table(["origin", *columns, "tuned − untuned"], rows) + "\n")


def addition_section(model_dir, out_dir):
    """A table of the sums' test scores and, for each sum, its λ sweep on validation as an SVG curve."""
    rows, sweeps = [], {}
    for path in sorted(glob.glob(os.path.join(model_dir, "origin_*", "*+*.json"))):
        if "_init-" not in os.path.basename(path):  # a sum, not a few-shot run that started from one
            tasks, lam = files.read_json(path, "tasks"), files.read_json(path, "lambda")
            test, relative = files.read_json(path, "test"), files.read_json(path, "relative")
            origin, name = os.path.basename(os.path.dirname(path)), "+".join(tasks)
            paper = PAPER_ADDITION.get(tuple(tasks)) or PAPER_ADDITION.get(tuple(reversed(tasks)))
            rows.append([name, origin, " / ".join(f"{100 * test[t]:.1f}" for t in tasks), f"{lam:.2f}",
                         " / ".join(f"{relative[t]:.2f}" for t in tasks),
                         f"{paper[0]} / {paper[1]} (λ {paper[2]})" if paper else "–"])
            sweep = files.read_json(path, "sweep")
            if sweep:  # λ chosen here, not given
                sweeps.setdefault(name, (tasks, []))[1].append((lam, sweep))
    if not rows:
        return ""
    images = []
    for name, (tasks, found) in sorted(sweeps.items()):
        lambdas = [step["lambda"] for step in found[0][1]]
        series = {key: [(100 * np.mean(at), 100 * np.std(at)) for at in zip(*[[step[key] for step in sweep]
                                                                               for _, sweep in found])]
                  for key in (*tasks, "mean")}
        labels = [f"{lam:g}" if k % 4 == 0 else "" for k, lam in enumerate(lambdas)]
        chosen = ", ".join(f"{lam:g}" for lam, _ in found)
        files.write_text(os.path.join(out_dir, f"addition_{name}.svg"), plots.line_chart(
            series, labels, f"{name}: validation score vs λ (chosen: {chosen})", "λ", "score ×100"))
        images.append(f"![{name}: validation score vs λ](addition_{name}.svg)")
    return ("## Zero-shot addition (paper §6c)\n\nTest exact match (Pearson for STS-B) ×100 of origin + λ(τa + τb), λ "
            "chosen on validation; relative = sum / single-task prompt; the paper's numbers are T5-base's (v1).\n\n"
            + markdown_table(["pair", "origin", "ours A / B", "λ", "relative A / B", "paper A / B"], rows) + "\n"
            + "".join(f"\n{image}\n" for image in images))


def fewshot_section(model_dir, out_dir):
    """Mean ± std over origins of F1 per target, init and shots; a table and an SVG curve per target."""
    found = {}
    for path in glob.glob(os.path.join(model_dir, "origin_*", "*shots*.json")):
        parsed = runs.parse_run_name(os.path.basename(path)[:-5])
        if not parsed or parsed[0] not in data.TASKS:
            continue
        target, shots, init = parsed
        result = files.read_json(path, "test").get(target)
        if result:
            found.setdefault(target, {}).setdefault("random origin" if init == "origin" else init, {}).setdefault(
                shots, []).append(metrics.headline(data.TASKS[target], result, "f1"))
    # a source task's untuned origins (run.sh --mini's baseline: the random origin at 0 shots only) are no target
    found = {target: inits for target, inits in found.items()
             if set(inits) != {"random origin"} or any(s for by in inits.values() for s in by)}
    if not found:
        return ""
    text = ["## Few-shot transfer (paper §6b)\n\nTest F1 ×100 (macro-F1 for multi-class), mean ± std over origins.\n"]
    for target, inits in sorted(found.items()):
        shots = sorted({s for by_shots in inits.values() for s in by_shots})
        rows = [[init] + [mean_std(by_shots.get(s, [])) for s in shots] for init, by_shots in sorted(inits.items())]
        paper = PAPER_FEWSHOT.get(target)
        note = (f"\nPaper at 0 / 100 shots: random {paper[0][0]} / {paper[0][1]}, TPV sum {paper[1][0]} / "
                f"{paper[1][1]}.\n" if paper else "")
        series = {init: [(100 * np.mean(by_shots[s]), 100 * np.std(by_shots[s])) if s in by_shots else None
                         for s in shots] for init, by_shots in sorted(inits.items())}
        files.write_text(os.path.join(out_dir, f"fewshot_{target}.svg"),
                         plots.line_chart(series, shots, f"{target}: F1 vs shots", "shots", "F1"))
        text.append(f"### {target}\n\n![{target}](fewshot_{target}.svg)\n\n"
                    + markdown_table(["init", *shots], rows) + "\n" + note)
    return "\n".join(text)


def cross_origin_section(out_dir):
    path = os.path.join(out_dir, "cross_origin.json")
    if not os.path.exists(path):
        return ""
    rows = []
    for task, entry in files.read_json(path).items():
        papers = [paper.get(task) for paper in (PAPER_CROSS_ORIGIN, PAPER_CROSS_ORIGIN_LLAMA)]
        rows.append([task, f"{entry['original'][0]:.1f} ± {entry['original'][1]:.1f}",
                     f"{entry['mixed'][0]:.1f} ± {entry['mixed'][1]:.1f}",
                     *[f"{paper[0]} / {paper[1]}" if paper else "–" for paper in papers]])
    return ("## Cross-origin (paper §6a)\n\nTest exact match ×100 of origin_i + τ_i (original) and origin_i + τ_j, "
            "j ≠ i (mixed), mean ± std over origin pairs.\n\n"
            + markdown_table(["task", "original", "mixed", "paper T5-base original / mixed",
                              "paper LLaMA-3.1-8B original / mixed"], rows) + "\n")


def write_report(runs_dir, model, out_dir):
    """results/README.md from what the runs left behind."""
    files.make_folder(out_dir)
    model_dir = runs.model_folder(runs_dir, model)
    parts = [f"# Results: {model}\n\nWritten by `python tpv.py report` from `{model_dir}`.\n",
             single_task_section(model_dir), addition_section(model_dir, out_dir), cross_origin_section(out_dir)]
    if os.path.exists(os.path.join(out_dir, "similarity.md")):
        with open(os.path.join(out_dir, "similarity.md")) as f:
            parts.append(f"## Cosine similarity (paper §6a)\n\n{PAPER_SIMILARITY}\n\n" + f.read())
    parts.append(fewshot_section(model_dir, out_dir))
    path = os.path.join(out_dir, "README.md")
    files.write_text(path, "\n".join(p for p in parts if p))
    return path
