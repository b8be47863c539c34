"""
Bad inputs that enter through the data package (original files, a canonical cache written by hand, the token
cache, the data folder, the paper's split rule, an offline download) end with one DataError or FileError line
naming the file (and line), what is wrong and how to fix it, and change no file; a damaged token cache is
rebuilt instead. One table of (setup, expected outcome, files that must not change), run in-process.

    python -m pytest -q tests/test_data_inputs.py
"""
import functools
import glob
import json
import os
import tarfile
from fnmatch import fnmatch
from unittest import mock

import numpy as np
import pytest

import data
from support import files
from support import hub
import model_t5

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root, above tests/
SPIECE = os.path.join(HERE, "..", "shared", "assets", "t5-spiece.model")
NEEDS_SPIECE = pytest.mark.skipif(not os.path.exists(SPIECE), reason="../shared/assets/t5-spiece.model is missing")
AS_ROOT = pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes whatever the permissions say")
EVERY_FILE = ("*",)
THE_DATA = ("*.jsonl", "*meta.json")  # a rebuilt token cache changes its .npz files, nothing else
NLI = {"sentence1": "A man sleeps.", "sentence2": "A man rests.", "gold_label": "neutral"}
SURROGATE = b'{"sentence1": "a\\ud800", "sentence2": "b", "gold_label": "neutral"}\n'  # valid JSON, not Unicode
SNLI_DEV, SCITAIL_DEV = "snli_1.0_dev.jsonl", "scitail_1.0_dev.txt"
SST2_HEADER = "sentence\tlabel\n"
GOOD_SST2 = {"dev.tsv": SST2_HEADER + "good film\t1\n"}
GARBAGE_META = {"meta.json": b"\x00{not json"}
TOKEN_TASK = data.get_task("sst2")


@functools.cache
def tokenizer():
    return model_t5.load_tokenizer(SPIECE)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No case may download: the offline ones must not, and every other one must stop before a download."""
    def refuse(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")
    monkeypatch.setattr(hub, "download", refuse)
    monkeypatch.delenv("TPV_OFFLINE", raising=False)


# -----------------------------------------------------------------------------
# inputs

def write_files(folder, contents):
    """{relative path: str or bytes} under folder."""
    for name, content in contents.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode())


def jsonl(*records):
    """JSON lines; a bytes record is written as it is (garbage, a line cut short)."""
    return b"".join(r if isinstance(r, bytes) else json.dumps(r).encode() + b"\n" for r in records)


def good_rows(task, n):
    """n canonical rows filling every field of the task's template, the labels taking turns."""
    return [{**{f: f"{f} {i}" for f in task.template_fields}, task.label_field: i % (len(task.labels) or 6)}
            for i in range(n)]


def canonical(name, **sizes):
    """The files of a hand-written cache of `name`: {split: number of good rows}."""
    return {f"{split}.jsonl": jsonl(*good_rows(data.get_task(name), n)) for split, n in sizes.items()}


def root(tmp):
    return str(tmp / "cache")


def good_cache(tmp, task):
    """A finished cache of the task, big enough for the paper's split rule: no failed call may change it."""
    data.write_cache(task, {"train": good_rows(task, 10), task.heldout: good_rows(task, 4)}, str(tmp), {}, root(tmp))


# -----------------------------------------------------------------------------
# setups: each writes its input under tmp and returns the call to make

def originals(name, contents, skip=False, force=True):
    """prepare() from original files over a good cache of the task; force, so that only the input can stop it."""
    task = data.get_task(name)

    def setup(tmp):
        good_cache(tmp, task)
        write_files(tmp / "src", contents)
        return lambda: data.prepare(task, str(tmp / "src"), root(tmp), skip_bad_rows=skip, force=force)
    return setup


def nli_record(name, file, record):
    """An original SNLI-format file: one good record, then `record`."""
    return originals(name, {file: jsonl(NLI, record)})


def cache_files(name, contents):
    """read_cache() of a cache written by hand."""
    def setup(tmp):
        write_files(tmp / "cache" / name, contents)
        return lambda: data.read_cache(data.get_task(name), root(tmp))
    return setup


def cache_row(name, row):
    """A hand-written train.jsonl: one good row, then `row` (a dict changes the good one)."""
    good = good_rows(data.get_task(name), 1)[0]
    return cache_files(name, {"train.jsonl": jsonl(good, {**good, **row} if isinstance(row, dict) else row)})


def paper_split(name, split, shots=0, **sizes):
    """split_tokens() of one of the paper's splits, from a hand-written cache of good rows."""
    def setup(tmp):
        write_files(tmp / "cache" / name, canonical(name, **sizes))
        return lambda: data.split_tokens(data.get_task(name), [split], tokenizer(), root(tmp), shots=shots)
    return setup


def damaged(damage):
    """split_tokens() of SST-2 once its cache (and token cache) is written and `damage(task folder)` done."""
    def setup(tmp):
        good_cache(tmp, TOKEN_TASK)

        def call():
            return data.split_tokens(TOKEN_TASK, ["train", "validation"], tokenizer(), root(tmp))
        call()  # writes the token cache to damage
        damage(os.path.join(root(tmp), TOKEN_TASK.name))
        return call
    return setup


def token_files(change):
    """A damage: change(path) of each token cache file."""
    def damage(folder):
        paths = glob.glob(os.path.join(folder, "tokens", "*.npz"))
        assert paths  # else the case would test nothing
        for path in paths:
            change(path)
    return damage


def cut(keep):
    """A change: the file's first keep(size) bytes only."""
    return lambda path: os.truncate(path, keep(os.path.getsize(path)))


def overwrite(content):
    """A change: the file's bytes replaced."""
    def change(path):
        with open(path, "wb") as f:
            f.write(content)
    return change


def as_npy(path):
    """A change: one bare array (.npy) where the archive of arrays (.npz) belongs."""
    with open(path, "wb") as f:
        np.save(f, np.arange(3))


def replace_with(make):
    """A change: the file replaced by make(its arrays)."""
    def change(path):
        with np.load(path) as cached:
            arrays = dict(cached)
        with open(path, "wb") as f:
            np.savez(f, **make(arrays))
    return change


def other_rows(arrays):
    """The token arrays of the first row only, under the right stamp: a cache that does not match its rows."""
    return {**arrays, "source_offsets": arrays["source_offsets"][:2], "target_offsets": arrays["target_offsets"][:2]}


def download(name, present=(), allow_download=False, offline_env=False):
    """download_task() when the files `present` were downloaded before (as if by an earlier run)."""
    def setup(tmp):
        write_files(tmp / "cache" / "raw" / name / "downloads", {f: "earlier download" for f in present})

        def call():
            with mock.patch.dict(os.environ, {"TPV_OFFLINE": "1"} if offline_env else {}):
                return data.download_task(name, root(tmp), allow_download=allow_download)
        return call
    return setup


def prepare_sst2(tmp):
    """The call of the setups below: prepare SST-2 (without force) from tmp/src into the data folder."""
    return lambda: data.prepare(TOKEN_TASK, str(tmp / "src"), root(tmp))


def read_sst2(tmp):
    return lambda: data.read_cache(TOKEN_TASK, root(tmp))


def download_sst2(tmp):
    return lambda: data.download_task(TOKEN_TASK.name, root(tmp))


def root_is_a_file(make_call):
    """make_call(tmp)'s call where the data folder is a file (and tmp/src holds good SST-2 files)."""
    def setup(tmp):
        write_files(tmp, {"cache": "a file, not a folder"})
        write_files(tmp / "src", GOOD_SST2)
        return make_call(tmp)
    return setup


def prepare_over(existing):
    """prepare() of SST-2, without force, into a task folder that holds the files `existing`."""
    def setup(tmp):
        write_files(tmp / "cache" / "sst2", existing)
        write_files(tmp / "src", GOOD_SST2)
        return prepare_sst2(tmp)
    return setup


def write_cache_over_prepared(tmp):
    good_cache(tmp, TOKEN_TASK)
    return lambda: data.write_cache(TOKEN_TASK, {"train": good_rows(TOKEN_TASK, 1)}, str(tmp), {}, root(tmp))


def source_is_a_file(tmp):
    write_files(tmp, {"src": "a file, not a folder"})
    return prepare_sst2(tmp)


def unwritable_root(tmp):
    """prepare() into a data folder nobody may write."""
    write_files(tmp / "src", GOOD_SST2)
    os.makedirs(tmp / "cache")
    os.chmod(tmp / "cache", 0o500)
    return prepare_sst2(tmp)


def unreadable_original(tmp):
    write_files(tmp / "src", GOOD_SST2)
    os.chmod(tmp / "src" / "dev.tsv", 0)
    return prepare_sst2(tmp)


def broken_link_original(tmp):
    os.makedirs(tmp / "src")
    os.symlink(tmp / "moved away.tsv", tmp / "src" / "dev.tsv")
    return prepare_sst2(tmp)


# -----------------------------------------------------------------------------
# the table

def case(name, setup, expected, keep=EVERY_FILE, marks=()):
    """expected: a fragment of the one-line error, or 'rebuilt' (the call succeeds with the right tokens)."""
    return pytest.param(setup, expected, keep, id=name, marks=marks)


CASES = [
    # 1. a wrong JSON type where text or a label belongs: original JSONL (SNLI, SciTail) ...
    case("snli text is a number", nli_record("snli", SNLI_DEV, {**NLI, "sentence1": 3}),
         f"{SNLI_DEV}:2: field 'premise' must be text, not a number"),
    case("snli text is null", nli_record("snli", SNLI_DEV, {**NLI, "sentence2": None}),
         f"{SNLI_DEV}:2: field 'hypothesis' must be text, not null"),
    case("snli text is a list", nli_record("snli", SNLI_DEV, {**NLI, "sentence1": ["A", "man"]}),
         "field 'premise' must be text, not a list"),
    case("snli text is an object", nli_record("snli", SNLI_DEV, {**NLI, "sentence1": {"text": "A man"}}),
         "field 'premise' must be text, not an object"),
    case("snli text is a boolean", nli_record("snli", SNLI_DEV, {**NLI, "sentence2": True}),
         "field 'hypothesis' must be text, not a boolean"),
    case("snli text is an unpaired surrogate", nli_record("snli", SNLI_DEV, SURROGATE),
         f"{SNLI_DEV}:2: field 'premise' is not Unicode text (an unpaired surrogate '\\ud800')"),
    case("snli label is a list", nli_record("snli", SNLI_DEV, {**NLI, "gold_label": ["neutral"]}),
         f"{SNLI_DEV}:2: unknown label (got ['neutral'])"),
    case("snli label is an object", nli_record("snli", SNLI_DEV, {**NLI, "gold_label": {"neutral": 1}}),
         "unknown label (got {'neutral': 1})"),
    case("snli label is a number", nli_record("snli", SNLI_DEV, {**NLI, "gold_label": 1}), "unknown label (got 1)"),
    case("snli label is null", nli_record("snli", SNLI_DEV, {**NLI, "gold_label": None}),
         "unknown label (got None)"),
    case("snli record is a list", nli_record("snli", SNLI_DEV, list(NLI.values())),
         f"{SNLI_DEV}:2: not a JSON record with sentence1, sentence2, gold_label"),
    case("snli record is a string", nli_record("snli", SNLI_DEV, "A man sleeps."), f"{SNLI_DEV}:2: not a JSON record"),
    case("snli record lacks the label", nli_record("snli", SNLI_DEV, {"sentence1": "a", "sentence2": "b"}),
         f"{SNLI_DEV}:2: not a JSON record"),
    case("scitail text is a number", nli_record("scitail", SCITAIL_DEV, {**NLI, "sentence2": 7}),
         f"{SCITAIL_DEV}:2: field 'hypothesis' must be text, not a number"),
    case("scitail text is null", nli_record("scitail", SCITAIL_DEV, {**NLI, "sentence1": None}),
         f"{SCITAIL_DEV}:2: field 'premise' must be text, not null"),
    # ... and a canonical cache written by hand
    case("cache text is a number", cache_row("mnli", {"premise": 3}),
         "train.jsonl:2: field 'premise' must be text, not a number"),
    case("cache text is null", cache_row("mnli", {"hypothesis": None}),
         "train.jsonl:2: field 'hypothesis' must be text, not null"),
    case("cache text is a list", cache_row("mnli", {"premise": ["a"]}), "field 'premise' must be text, not a list"),
    case("cache text is an object", cache_row("mnli", {"premise": {}}), "field 'premise' must be text, not an object"),
    case("cache text is blank", cache_row("mnli", {"premise": " \t"}), "train.jsonl:2: empty text in field 'premise'"),
    case("cache text field is missing", cache_row("sst2", b'{"label": 0}\n'), "train.jsonl:2: no field 'sentence'"),
    case("cache optional text is null", cache_row("yahoo", {"question_content": None}),
         "train.jsonl:2: field 'question_content' must be text, not null"),
    case("cache label is null", cache_row("mnli", {"label": None}),
         "train.jsonl:2: label None is not one of mnli's labels (0 to 2)"),
    case("cache label is missing", cache_row("mnli", b'{"premise": "a", "hypothesis": "b"}\n'),
         "train.jsonl:2: no field 'label'"),
    case("cache label is a boolean", cache_row("mnli", {"label": True}), "label True is not one of mnli's labels"),
    case("cache label is a string", cache_row("mnli", {"label": "0"}), "label '0' is not one of mnli's labels"),
    case("cache label is a float", cache_row("mnli", {"label": 1.0}), "label 1.0 is not one of mnli's labels"),
    case("cache label is a list", cache_row("sst2", {"label": [1]}), "label [1] is not one of sst2's labels (0 to 1)"),
    case("cache label out of range", cache_row("mnli", {"label": 3}), "label 3 is not one of mnli's labels"),
    case("cache score out of range", cache_row("stsb", {"label": 5.5}),
         "label 5.5 is not one of stsb's labels (a score from 0 to 5)"),
    case("cache score is NaN", cache_row("stsb", b'{"sentence1": "a", "sentence2": "b", "label": NaN}\n'),
         "train.jsonl:2: label nan is not one of stsb's labels"),
    case("cache row is a list", cache_row("mnli", ["a", "b", 0]), "train.jsonl:2: not a JSON object but a list"),
    case("cache row is a number", cache_row("mnli", 7), "train.jsonl:2: not a JSON object but a number"),
    case("cache row is a string", cache_row("mnli", "a b 0"), "train.jsonl:2: not a JSON object but text"),
    # ... and the tab- and comma-separated readers
    case("tsv row lacks its label column", originals("sst2", {"dev.tsv": SST2_HEADER + "good\t1\nno label\n"}),
         "dev.tsv:3: wrong column count (expected 2, got 1)"),
    case("cola row lacks a column", originals("cola", {"dev.tsv": "gj04\t1\t\tGood.\ngj04\t1\tNo label.\n"}),
         "dev.tsv:2: wrong column count (expected 4, got 3)"),
    case("tsv header lacks the label column", originals("sst2", {"dev.tsv": "sentence\tscore\ngood\t1\n"}),
         "dev.tsv:1: no column 'label' in the header; is this the right file?"),
    case("mrpc source header lacks Quality", originals("mrpc", {
        "msr_paraphrase_train.txt": "#1 ID\t#2 ID\t#1 String\t#2 String\n1\t2\ta\tb\n", "mrpc_dev_ids.tsv": "1\t2\n"}),
        "msr_paraphrase_train.txt:1: no column 'Quality' in the header"),
    case("qqp label out of range", originals("qqp", {"dev.tsv": "question1\tquestion2\tis_duplicate\na\tb\t2\n"}),
         "dev.tsv:2: unknown label (got '2')"),
    case("csv label is empty", originals("ag_news", {"test.csv": '"3","Title","Body"\n"","Title","Body"\n'}),
         "test.csv:2: unknown label (got '')"),
    case("csv label out of range", originals("ag_news", {"test.csv": '"5","Title","Body"\n'}),
         "test.csv:1: unknown label (got '5')"),
    case("csv texts are empty", originals("dbpedia", {"test.csv": '"1","",""\n'}),
         "test.csv:1: empty text in field 'title'"),
    case("trec question is missing", originals("trec", {"TREC_10.label": "DESC:manner How ?\nNUM:date\n"}),
         "TREC_10.label:2: empty text in field 'text'"),

    # 2. original files that yield no example: an error before anything is written
    case("empty tsv", originals("sst2", {"dev.tsv": ""}), "dev.tsv: no examples"),
    case("header-only tsv", originals("sst2", {"dev.tsv": SST2_HEADER}), "dev.tsv: no examples"),
    case("blank-lines-only tsv", originals("sst2", {"dev.tsv": SST2_HEADER + "\n \n"}), "dev.tsv: no examples"),
    case("every row skipped", originals("sst2", {"dev.tsv": SST2_HEADER + "bad\t7\n \t1\n"}, skip=True),
         "dev.tsv: no examples"),
    case("one of two files empty", originals("sst2", {"dev.tsv": SST2_HEADER + "good\t1\n", "train.tsv": ""}),
         "train.tsv: no examples"),
    case("empty jsonl", originals("snli", {SNLI_DEV: ""}), f"{SNLI_DEV}: no examples"),
    case("every snli label dropped", originals("snli", {SNLI_DEV: jsonl({**NLI, "gold_label": "-"})}),
         f"{SNLI_DEV}: no examples"),
    case("every jsonl record skipped", originals("snli", {SNLI_DEV: jsonl({**NLI, "sentence1": 1}, b"{cut\n")},
                                                 skip=True), f"{SNLI_DEV}: no examples"),
    case("blank-lines-only csv", originals("ag_news", {"test.csv": "\n\n"}), "test.csv: no examples"),
    case("empty trec file", originals("trec", {"TREC_10.label": ""}), "TREC_10.label: no examples"),
    case("empty sst5 trees", originals("sst5", {"trees/dev.txt": ""}), "dev.txt: no examples"),
    case("every imdb review skipped", originals("imdb", {"aclImdb/test/pos/0_9.txt": b"\xff\xfe"}, skip=True),
         "(aclImdb/test): no examples"),
    case("mrpc dev ids match no pair", originals("mrpc", {
        "msr_paraphrase_train.txt": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\n",
        "mrpc_dev_ids.tsv": "8\t9\n"}), "msr_paraphrase_train.txt (validation rows, by "),
    case("empty cache split", cache_files("mnli", {"train.jsonl": ""}), "train.jsonl: no examples"),
    case("blank-lines-only cache split", cache_files("mnli", {"train.jsonl": "\n\n"}), "train.jsonl: no examples"),

    # 3. a finished cache is replaced only on request (--force); meta.json is never parsed for that
    case("prepare over a prepared cache", originals("sst2", {"dev.tsv": SST2_HEADER + "good\t1\n"}, force=False),
         "sst2 already holds a prepared cache; pass --force to prepare it again"),
    case("prepare over a hand-written cache", prepare_over(canonical("sst2", validation=2)),
         "already holds a prepared cache"),
    case("prepare over a garbage meta.json", prepare_over(GARBAGE_META), "already holds a prepared cache"),
    case("write_cache over a prepared cache", write_cache_over_prepared, "already holds a prepared cache"),

    # 4. the data folder, and cache files that are not what they should be
    case("data folder is a file: prepare", root_is_a_file(prepare_sst2),
         "cache: not a folder; point --data-dir (or TPV_DATA) to a folder"),
    case("data folder is a file: read", root_is_a_file(read_sst2), "cache: not a folder"),
    case("data folder is a file: download", root_is_a_file(download_sst2), "cannot create the folder"),
    case("data folder is not writable", unwritable_root, "cannot create the folder", marks=AS_ROOT),
    case("original file is not readable", unreadable_original, "dev.tsv: cannot read (Permission denied)",
         marks=AS_ROOT),
    case("original file is a broken link", broken_link_original, "dev.tsv: cannot read (No such file or directory)"),
    case("source is a file", source_is_a_file, "src: no such folder"),
    case("cache split is binary garbage", cache_files("mnli", {"train.jsonl": bytes(range(256))}),
         "train.jsonl:1: not a line of UTF-8 JSON"),
    case("cache split is cut short", cache_files("mnli", {"train.jsonl": canonical("mnli", train=2)["train.jsonl"] +
                                                          b'{"premise": "a", "hypo'}),
         "train.jsonl:3: not a line of UTF-8 JSON"),
    case("cache split is latin-1", cache_row("sst2", '{"sentence": "caf\xe9", "label": 0}\n'.encode("latin-1")),
         "train.jsonl:2: not a line of UTF-8 JSON"),
    case("cache split is utf-16", cache_files("sst2", {"train.jsonl": '{"sentence": "a", "label": 0}\n'
                                                       .encode("utf-16")}), "train.jsonl:1: not a line of UTF-8 JSON"),
    case("cache split is one JSON array", cache_files("sst2", {"train.jsonl": json.dumps(good_rows(TOKEN_TASK, 2))}),
         "train.jsonl:1: not a JSON object but a list"),
    case("token cache cut in half", damaged(token_files(cut(lambda n: n // 2))), "rebuilt", THE_DATA,
         marks=NEEDS_SPIECE),
    case("token cache of zero bytes", damaged(token_files(cut(lambda n: 0))), "rebuilt", THE_DATA,
         marks=NEEDS_SPIECE),
    case("token cache is garbage", damaged(token_files(overwrite(b"not a zip file\n" * 9))), "rebuilt", THE_DATA,
         marks=NEEDS_SPIECE),
    case("token cache is a .npy", damaged(token_files(as_npy)), "rebuilt", THE_DATA, marks=NEEDS_SPIECE),
    case("token cache lacks arrays", damaged(token_files(replace_with(lambda a: {"stamp": a["stamp"]}))),
         "rebuilt", THE_DATA, marks=NEEDS_SPIECE),
    case("token cache of other rows", damaged(token_files(replace_with(other_rows))), "rebuilt", THE_DATA,
         marks=NEEDS_SPIECE),
    case("garbage meta.json", damaged(lambda folder: write_files(folder, GARBAGE_META)), "rebuilt", THE_DATA,
         marks=NEEDS_SPIECE),

    # 5. a paper split left empty by the split rule, and few-shot sizes
    case("large rule, tiny train", paper_split("mnli", "validation", train=4, validation=2),
         "mnli: the validation split has no examples", marks=NEEDS_SPIECE),
    case("small rule, one held-out row", paper_split("rte", "validation", train=4, validation=1),
         "rte: the validation split has no examples", marks=NEEDS_SPIECE),
    case("more shots than train", paper_split("mnli", "train", shots=100, train=10, validation=2),
         "mnli: 100 shots asked, but train has only 8 examples; ask for 0 to 8 shots", marks=NEEDS_SPIECE),
    case("negative shots", paper_split("mnli", "train", shots=-1, train=10, validation=2),
         "mnli: -1 shots asked", marks=NEEDS_SPIECE),

    # 6. offline: nothing is fetched, and nothing is made
    case("offline, never downloaded", download("sst2"),
         "sst2: not downloaded and --offline (or TPV_OFFLINE=1) forbids downloading"),
    case("offline, partly downloaded", download("mrpc", present=["msr_paraphrase_train.txt"]),
         "mrpc: not downloaded and --offline"),
    case("TPV_OFFLINE=1", download("trec", allow_download=True, offline_env=True),
         "trec: not downloaded and --offline"),
]


# -----------------------------------------------------------------------------
# the test

def contents(file):
    """A file's bytes; the unreadable inputs (no permission, a broken link) are compared by their mtime only."""
    if not os.access(file, os.R_OK):
        return "unreadable"
    with open(file, "rb") as f:
        return f.read()


def snapshot(folder):
    """Every folder and file under folder, a file with its bytes and mtime: what must not change."""
    found = {}
    for path, dirs, names in os.walk(folder):
        found.update({os.path.relpath(os.path.join(path, d), folder): "folder" for d in dirs})
        for name in names:
            file = os.path.join(path, name)
            found[os.path.relpath(file, folder)] = contents(file), os.lstat(file).st_mtime_ns
    return found


def assert_rebuilt(tmp, call, result):
    """The call's tokens are those of its rows, and the token cache is whole again: a second call reads it."""
    for tokens, rows in result.values():
        fresh = data.tokenize(TOKEN_TASK, rows, tokenizer())
        assert all(np.array_equal(tokens[k], fresh[k]) for k in tokens)
    written = snapshot(tmp)
    call()
    assert snapshot(tmp) == written


@pytest.mark.parametrize("setup, expected, keep", CASES)
def test_bad_input_is_one_line_and_changes_nothing(tmp_path, setup, expected, keep):
    call = setup(tmp_path)
    before = snapshot(tmp_path)
    if expected == "rebuilt":
        assert_rebuilt(tmp_path, call, call())
        after = snapshot(tmp_path)
        kept = [p for p in before if any(fnmatch(p, k) for k in keep)]
        assert kept and {p: after.get(p) for p in kept} == {p: before[p] for p in kept}
    else:
        with pytest.raises((data.DataError, files.FileError)) as error:
            call()
        message = str(error.value)
        assert expected in message and "\n" not in message
        assert snapshot(tmp_path) == before  # nothing changed, nothing partial left behind


# -----------------------------------------------------------------------------
# what bad rows, --force, offline and few shots do when they do not stop the call

def test_skipped_rows_are_counted_by_reason(tmp_path):
    write_files(tmp_path / "src", {SNLI_DEV: jsonl(NLI, {**NLI, "sentence1": 3}, {**NLI, "gold_label": [1]}, NLI)})
    report = data.prepare(data.get_task("snli"), str(tmp_path / "src"), root(tmp_path), skip_bad_rows=True)
    assert "skipped rows: 1 field 'premise' must be text, not a number, 1 unknown label" in report
    assert len(data.read_cache(data.get_task("snli"), root(tmp_path))["validation"]) == 2


def test_force_replaces_every_split_and_drops_the_stale_ones(tmp_path):
    good_cache(tmp_path, TOKEN_TASK)
    write_files(tmp_path / "src", GOOD_SST2)
    data.prepare(TOKEN_TASK, str(tmp_path / "src"), root(tmp_path), force=True)
    folder = os.path.join(root(tmp_path), "sst2")
    assert sorted(os.listdir(folder)) == ["meta.json", "validation.jsonl"]  # the old train split is gone
    assert data.read_cache(TOKEN_TASK, root(tmp_path))["validation"][0]["sentence"] == "good film"


def test_a_failed_write_replaces_no_split(tmp_path):
    """The splits are swapped in all at once: a write that fails (here on text no UTF-8 file can hold) after
    another split was written leaves every file of the old cache as it was, and no temporary file."""
    good_cache(tmp_path, TOKEN_TASK)
    before = snapshot(tmp_path)
    unwritable = [{"sentence": "\ud800", "label": 0}]
    with pytest.raises(UnicodeEncodeError):
        data.write_cache(TOKEN_TASK, {"train": good_rows(TOKEN_TASK, 3), "validation": unwritable}, str(tmp_path),
                         {}, root(tmp_path), force=True)
    assert snapshot(tmp_path) == before


def test_offline_unpacks_what_was_downloaded_before(tmp_path):
    downloads = tmp_path / "cache" / "raw" / "imdb" / "downloads"
    os.makedirs(downloads)
    with tarfile.open(downloads / "aclImdb_v1.tar.gz", "w:gz"):
        pass  # the reader reads IMDB's archive in place: download_task only copies it
    folder, checked = data.download_task("imdb", root(tmp_path), allow_download=False)
    assert os.listdir(folder) == ["aclImdb_v1.tar.gz"] and checked == 0


@NEEDS_SPIECE
def test_zero_shots_is_all_of_train(tmp_path):
    write_files(tmp_path / "cache" / "mnli", canonical("mnli", train=10, validation=2))
    _, rows = data.split_tokens(data.get_task("mnli"), ["train"], tokenizer(), root(tmp_path), shots=0)["train"]
    assert len(rows) == 10 - 2  # the paper's train: the original train less the validation examples carved out


def test_fewer_shots_than_classes_go_to_the_largest_classes():
    task = data.get_task("mnli")
    train = [{"premise": "p", "hypothesis": "h", "label": label} for label in [0] * 2 + [1] * 5 + [2] * 3]
    assert [r["label"] for r in data.few_shot(task, train, 1)] == [1]
    assert sorted(r["label"] for r in data.few_shot(task, train, 2)) == [1, 2]
    assert data.few_shot(task, train, 0) == []
