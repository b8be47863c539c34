"""
Readers for each dataset's original distribution files (formats and quirks: the comments at each reader).

Each reader turns the files under a folder into {"train" | "validation" | "test": [example, ...]} with the
Hugging Face `datasets` field names and integer labels. Every row is checked; a bad row names `path:line`, the
reason and the offending text, and stops the reading unless the user chose to skip bad rows. A file that yields
no example (empty, only a header, every row skipped) is an error too, raised before anything is written.
"""
import csv
import io
import json
import os
import re
import tarfile
from collections import Counter

from .tasks import DataError, excerpt, text_problem


class BadRows:
    """Raises on the first bad row, or (skip=True) counts bad rows by reason and goes on."""

    def __init__(self, skip=False):
        self.skip, self.counts = skip, Counter()

    def __call__(self, path, line, reason, text):
        if not self.skip:
            raise DataError(f"{path}:{line}: {reason}: {excerpt(text)!r} (fix the file, or pass --skip-bad-rows)")
        self.counts[reason.split(" (")[0]] += 1


def locate(folder, name):
    """The file called `name` in folder or below it (archives unpack into subfolders), or None."""
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        if name in files:
            return os.path.join(root, name)
    return None


def present(folder, files):
    """(split, path) for each {split: file name} found under folder."""
    for split, name in files.items():
        path = locate(folder, name)
        if path is not None:
            yield split, path


def lines(path, bad, encoding="utf-8"):
    """(line number, text without the line break), decoding strictly so a bad byte names its line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as e:
                bad(path, n, f"undecodable bytes (not {encoding} at byte {e.start})", raw.decode(encoding, "replace"))
                continue
            text = text.rstrip("\r\n")
            yield n, text.removeprefix("\ufeff") if n == 1 else text


def checked(where, task_fields, label_field, label_of, rows, bad):
    """rows: (path, line, example with the raw label, raw text) read from `where`. Maps labels, rejects texts
    that are empty or not text; no example left is an error naming `where`."""
    out = []
    for path, n, example, raw in rows:
        try:
            example[label_field] = label_of(example[label_field])
        except (KeyError, ValueError, TypeError):  # TypeError: a JSON list or object, which no label table holds
            bad(path, n, f"unknown label (got {example[label_field]!r})", raw)
            continue
        problem = text_problem(example, task_fields, task_fields)
        if problem:
            bad(path, n, problem, raw)
            continue
        out.append(example)
    if not out:
        raise DataError(f"{where}: no examples (the file is empty, holds only a header, or every row was bad and "
                        f"skipped); give prepare the dataset's original files")
    return out


def index_of(names):
    table = {name: i for i, name in enumerate(names)}
    return lambda raw: table[raw]


def int_in(low, high, offset=0):
    """'3' -> 3 - offset, for labels written as numbers in [low, high]."""
    def parse(raw):
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(raw)
        return value - offset
    return parse


# -----------------------------------------------------------------------------
# GLUE: tab-separated, quotes are ordinary characters (csv.QUOTE_NONE, as HF's glue.py reads them)

def tsv_rows(path, bad, columns=None, required=()):
    """(line, {column: value}, raw line) of each row; `columns` name them, or else the header, which must name
    every `required` column (checked before the first row, so a wrong file is one error, not one per row)."""
    it = lines(path, bad)
    if columns is None:
        _, header = next(it, (0, None))
        if header is None:  # an empty file: no rows, which checked() reports
            return
        columns = header.split("\t")
        missing = [c for c in required if c not in columns]
        if missing:
            raise DataError(f"{path}:1: no column {missing[0]!r} in the header; is this the right file?")
    for n, line in it:
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(columns):
            bad(path, n, f"wrong column count (expected {len(columns)}, got {len(fields)})", line)
            continue
        yield n, dict(zip(columns, fields)), line


def split_reader(files, text_fields, label_of, candidates):
    """A reader of one original file per split (files: {split: file name}); candidates(path, bad) yields each
    row as (path, line number, example, raw line), and checked() keeps the good ones."""
    def read(folder, bad):
        return {split: checked(path, text_fields, "label", label_of, list(candidates(path, bad)), bad)
                for split, path in present(folder, files)}
    return read


def glue_reader(files, fields, label_column, label_of, columns=None):
    """fields: {HF field: file column}."""
    def candidates(path, bad):
        for i, (n, row, raw) in enumerate(tsv_rows(path, bad, columns, [*fields.values(), label_column])):
            yield path, n, {**{f: row[c] for f, c in fields.items()}, "label": row[label_column], "idx": i}, raw
    return split_reader(files, tuple(f for f in fields if f != "label"), label_of, candidates)


GLUE_FILES = {"train": "train.tsv", "validation": "dev.tsv"}
ENTAILMENT2 = index_of(["entailment", "not_entailment"])

READERS = {
    "glue_mnli": glue_reader({"train": "train.tsv", "validation": "dev_matched.tsv"},
                             {"premise": "sentence1", "hypothesis": "sentence2"}, "gold_label",
                             index_of(["entailment", "neutral", "contradiction"])),
    "glue_qnli": glue_reader(GLUE_FILES, {"question": "question", "sentence": "sentence"}, "label", ENTAILMENT2),
    "glue_rte": glue_reader(GLUE_FILES, {"sentence1": "sentence1", "sentence2": "sentence2"}, "label", ENTAILMENT2),
    "glue_sst2": glue_reader(GLUE_FILES, {"sentence": "sentence"}, "label", int_in(0, 1)),
    "glue_qqp": glue_reader(GLUE_FILES, {"question1": "question1", "question2": "question2"}, "is_duplicate",
                            int_in(0, 1)),
    "glue_cola": glue_reader(GLUE_FILES, {"sentence": "sentence"}, "label", int_in(0, 1),
                             columns=["source", "label", "original_label", "sentence"]),  # CoLA has no header
}


def score_0_to_5(raw):
    value = float(raw)
    if not 0.0 <= value <= 5.0:
        raise ValueError(raw)
    return value


READERS["glue_stsb"] = glue_reader(GLUE_FILES, {"sentence1": "sentence1", "sentence2": "sentence2"}, "score",
                                   score_0_to_5)
glue_mrpc_tsv = glue_reader(GLUE_FILES, {"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality",
                            int_in(0, 1))


def glue_mrpc(folder, bad):
    """GLUE's train.tsv/dev.tsv when present; otherwise GLUE's own rule applied to the SentEval files: a pair of
    msr_paraphrase_train.txt is dev if its ids are in mrpc_dev_ids.tsv (download_glue_data.py)."""
    if locate(folder, "dev.tsv") or locate(folder, "train.tsv"):
        return glue_mrpc_tsv(folder, bad)
    source = locate(folder, "msr_paraphrase_train.txt")
    ids_file = locate(folder, "mrpc_dev_ids.tsv") or locate(folder, "dev_ids.tsv")
    if source is None or ids_file is None:
        return {}
    dev_ids = {tuple(line.split("\t")) for _, line in lines(ids_file, bad) if line}
    rows = {"train": [], "validation": []}
    for n, row, raw in tsv_rows(source, bad, required=("#1 ID", "#2 ID", "#1 String", "#2 String", "Quality")):
        split = "validation" if (row["#1 ID"], row["#2 ID"]) in dev_ids else "train"
        example = {"sentence1": row["#1 String"], "sentence2": row["#2 String"], "label": row["Quality"],
                   "idx": len(rows[split])}
        rows[split].append((source, n, example, raw))
    return {s: checked(f"{source} ({s} rows, by {ids_file})", ("sentence1", "sentence2"), "label", int_in(0, 1), r,
                       bad) for s, r in rows.items()}


READERS["glue_mrpc"] = glue_mrpc


# -----------------------------------------------------------------------------
# JSON lines: SNLI and SciTail (snli_format)

def jsonl_reader(files, fields, text_fields, label_of, dropped_labels=()):
    def candidates(path, bad):
        for n, line in lines(path, bad):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                example = {f: record[c] for f, c in fields.items()}
            except (ValueError, KeyError, TypeError) as e:
                bad(path, n, f"not a JSON record with {', '.join(fields.values())} ({e})", line)
                continue
            if example["label"] not in dropped_labels:  # SNLI's "-": no majority label; HF drops it too
                yield path, n, example, line
    return split_reader(files, text_fields, label_of, candidates)


NLI_FIELDS = {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"}
READERS["snli"] = jsonl_reader({"train": "snli_1.0_train.jsonl", "validation": "snli_1.0_dev.jsonl",
                                "test": "snli_1.0_test.jsonl"}, NLI_FIELDS, ("premise", "hypothesis"),
                               index_of(["entailment", "neutral", "contradiction"]), dropped_labels=("-",))
READERS["scitail"] = jsonl_reader({"train": "scitail_1.0_train.txt", "validation": "scitail_1.0_dev.txt",
                                   "test": "scitail_1.0_test.txt"}, NLI_FIELDS, ("premise", "hypothesis"),
                                  index_of(["entailment", "neutral"]))


# -----------------------------------------------------------------------------
# Zhang et al. 2015 CSVs: quoted fields with "" inside, 1-based classes, no header

def unescape_zhang(text):
    # Yelp and Yahoo write line breaks as the two characters \n and JSON's \" as \"" (read by csv as \")
    return text.replace("\\n", "\n").replace('\\"', '"')


def zhang_reader(columns, make, text_fields, label_field, n_classes):
    """make(record, index) -> example without its label; the label is record[0], 1-based."""
    def read(folder, bad):
        splits = {}
        for split, path in present(folder, {"train": "train.csv", "test": "test.csv"}):
            reader = csv.reader(line + "\n" for _, line in lines(path, bad))
            rows, end = [], 0
            while True:
                start = end + 1  # a record may span lines; errors name the line it starts on
                try:
                    record = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    end = reader.line_num
                    bad(path, start, f"malformed CSV ({e})", "")
                    continue
                end, raw = reader.line_num, ",".join(record)
                if not record:  # a blank line, as the other readers skip them
                    continue
                if len(record) != columns:
                    bad(path, start, f"wrong column count (expected {columns}, got {len(record)})", raw)
                    continue
                rows.append((path, start, {**make(record, len(rows)), label_field: record[0]}, raw))
            splits[split] = checked(path, text_fields, label_field, int_in(1, n_classes, offset=1), rows, bad)
        return splits
    return read


READERS["zhang_ag_news"] = zhang_reader(3, lambda r, i: {"text": f"{r[1]} {r[2]}"}, ("text",), "label", 4)
READERS["zhang_dbpedia"] = zhang_reader(3, lambda r, i: {"title": r[1], "content": r[2]}, ("title", "content"),
                                        "label", 14)
READERS["zhang_yelp"] = zhang_reader(2, lambda r, i: {"text": unescape_zhang(r[1])}, ("text",), "label", 2)
READERS["zhang_yahoo"] = zhang_reader(4, lambda r, i: {"id": i, "question_title": unescape_zhang(r[1]),
                                                       "question_content": unescape_zhang(r[2]),
                                                       "best_answer": unescape_zhang(r[3])},
                                      ("question_title",), "topic", 10)


# -----------------------------------------------------------------------------
# TREC (Li & Roth): "COARSE:fine question text", one byte of train_5500.label is not UTF-8

TREC_COARSE = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]  # HF trec's coarse_label order
TREC_FINE = ["ABBR:abb", "ABBR:exp", "ENTY:animal", "ENTY:body", "ENTY:color", "ENTY:cremat", "ENTY:currency",
             "ENTY:dismed", "ENTY:event", "ENTY:food", "ENTY:instru", "ENTY:lang", "ENTY:letter", "ENTY:other",
             "ENTY:plant", "ENTY:product", "ENTY:religion", "ENTY:sport", "ENTY:substance", "ENTY:symbol",
             "ENTY:techmeth", "ENTY:termeq", "ENTY:veh", "ENTY:word", "DESC:def", "DESC:desc", "DESC:manner",
             "DESC:reason", "HUM:gr", "HUM:ind", "HUM:title", "HUM:desc", "LOC:city", "LOC:country",
             "LOC:mount", "LOC:other", "LOC:state", "NUM:code", "NUM:count", "NUM:date", "NUM:dist", "NUM:money",
             "NUM:ord", "NUM:other", "NUM:period", "NUM:perc", "NUM:speed", "NUM:temp", "NUM:volsize",
             "NUM:weight"]


def trec(folder, bad):
    splits = {}
    for split, path in present(folder, {"train": "train_5500.label", "test": "TREC_10.label"}):
        with open(path, "rb") as f:
            # the one byte 0xF0 ("sister\xf0city") becomes a space, as HF's trec.py does; anything else must be UTF-8
            data = io.BytesIO(f.read().replace(b"\xf0", b" "))
        rows = []
        for n, raw in enumerate(data, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                bad(path, n, f"undecodable bytes (not utf-8 at byte {e.start})", raw.decode("utf-8", "replace"))
                continue
            if not line:
                continue
            label, _, text = line.partition(" ")
            if label not in TREC_FINE:
                bad(path, n, f"unknown label (got {label!r})", line)
                continue
            rows.append((path, n, {"text": text, "coarse_label": label.split(":")[0],
                                   "fine_label": TREC_FINE.index(label)}, line))
        splits[split] = checked(path, ("text",), "coarse_label", index_of(TREC_COARSE), rows, bad)
    return splits


READERS["trec"] = trec


# -----------------------------------------------------------------------------
# IMDB: one review per file, aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt, in folders or in the archive

IMDB_NAME = re.compile(r"(?:^|/)aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")


def imdb(folder, bad):
    found = []  # (split, label, id, path for messages, bytes)
    archive = locate(folder, "aclImdb_v1.tar.gz")
    if archive:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    m = IMDB_NAME.search(member.name)
                    if m and member.isfile():
                        found.append((*m.groups()[:3], f"{archive}!{member.name}", tar.extractfile(member).read()))
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"{archive}: truncated or corrupt archive ({e}); delete it and download again") from None
    else:
        for root, _, files in os.walk(folder):
            for name in files:
                m = IMDB_NAME.search(os.path.join(root, name).replace(os.sep, "/"))
                if m:
                    path = os.path.join(root, name)
                    with open(path, "rb") as f:
                        found.append((*m.groups()[:3], path, f.read()))
    splits = {}
    for split, label, review_id, path, data in sorted(found, key=lambda r: (r[0], r[1] == "pos", int(r[2]))):
        rows = splits.setdefault(split, [])  # even if every review is bad: checked() then names the split
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            bad(path, 1, f"undecodable bytes (not utf-8 at byte {e.start})", data.decode("utf-8", "replace"))
            continue
        rows.append((path, 1, {"text": text, "label": label}, text))
    return {s: checked(f"{archive or folder} (aclImdb/{s})", ("text",), "label", index_of(["neg", "pos"]), rows, bad)
            for s, rows in splits.items()}


READERS["imdb"] = imdb


# -----------------------------------------------------------------------------
# SST-5: the Stanford Sentiment Treebank's PTB trees; the root's label is the sentence's

PTB_UNESCAPE = {"-LRB-": "(", "-RRB-": ")"}


def sst5_trees(folder, bad):
    splits = {}
    for split, path in present(folder, {"train": "train.txt", "validation": "dev.txt", "test": "test.txt"}):
        rows = []
        for n, line in lines(path, bad):
            if not line.strip():
                continue
            root = re.match(r"\((\d) ", line)
            leaves = re.findall(r"\(\d ([^()\s]+)\)", line)
            if not root or not leaves or line.count("(") != line.count(")"):
                bad(path, n, "not a PTB sentiment tree", line)
                continue
            text = " ".join(PTB_UNESCAPE.get(w, w) for w in leaves)
            rows.append((path, n, {"text": text, "label": root.group(1)}, line))
        splits[split] = checked(path, ("text",), "label", int_in(0, 4), rows, bad)
    return splits


READERS["sst5_trees"] = sst5_trees


def read_task(task, folder, skip_bad_rows=False):
    """The original files of `task` under folder -> ({split: [example]}, {bad-row reason: count})."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder")
    bad = BadRows(skip_bad_rows)
    try:
        splits = READERS[task.reader](folder, bad)
    except OSError as e:  # a file we found but may not read (permissions, a broken link): one line, as bad rows
        raise DataError(f"{e.filename or folder}: cannot read ({e.strerror or e}); make it readable, or give "
                        f"prepare a copy of the original files") from None
    if not splits:
        raise DataError(f"{folder}: none of {task.name}'s original files found (the README's "
                        f"'Data' section lists them; or run: python tpv.py download-data {task.name})")
    return splits, dict(bad.counts)
