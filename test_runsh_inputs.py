"""run.sh's handling of its command line, with a stub in place of python: no training, seconds in all.

The stub ($PYTHON) appends its arguments (tpv.py and what follows) as one JSON list a line to $STUB_LOG and exits 0,
or 1 when its tpv.py command is $STUB_FAIL. run.sh is copied into a folder whose name holds a space, as a repository
checked out there would be, and run from another folder.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_SH = os.path.join(HERE, "run.sh")
HOSTILE = "a b 'q' \"dq\" $HOME *"  # a folder name for paths: spaces, quotes, a $ and a glob
QUICK_TASKS = ("sst2", "cola", "trec", "rte")  # what --quick prepares by default


@pytest.fixture
def sandbox(tmp_path):
    """A repository folder with run.sh, a stub python, dataset samples and T5's vocabulary, all under spaced names."""
    repo = tmp_path / "my repo"
    repo.mkdir()
    shutil.copy(RUN_SH, repo / "run.sh")
    stub = tmp_path / "fake python" / "python"
    stub.parent.mkdir()
    stub.write_text(f"#!{sys.executable} -S\n"  # -S: no site-packages, a faster start
                    "import json, os, sys\n"
                    "with open(os.environ['STUB_LOG'], 'a') as f:\n"
                    "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
                    "if sys.argv[2:3] == [os.environ.get('STUB_FAIL')]:\n"
                    "    sys.exit('stub: failing on purpose')\n")
    stub.chmod(0o755)
    shared = tmp_path / "shared data"
    for task in QUICK_TASKS:
        (shared / "data" / task).mkdir(parents=True)
    (shared / "assets").mkdir()
    (shared / "assets" / "t5-spiece.model").write_bytes(b"spiece")
    (tmp_path / "no vocabulary" / "data" / "sst2").mkdir(parents=True)
    caller = tmp_path / "caller dir"
    caller.mkdir()
    return tmp_path


def run(sandbox, *args, fail=None):
    """Runs the sandbox's run.sh from its caller folder; returns (process, the recorded tpv.py argument lists)."""
    log = sandbox / "calls.jsonl"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHON": str(sandbox / "fake python" / "python"), "STUB_LOG": str(log)}
    env.pop("TPV_DATA", None)
    if fail:
        env["STUB_FAIL"] = fail
    args = [a.format(tmp=sandbox) for a in args]
    process = subprocess.run(["bash", str(sandbox / "my repo" / "run.sh"), *args], cwd=sandbox / "caller dir",
                             env=env, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert all(call[0] == "tpv.py" for call in calls)
    return process, calls


def option(call, name):
    return call[call.index(name) + 1] if name in call else None


SAMPLES = ["--samples", "{tmp}/shared data/data"]
BAD = [
    *[([name], f"run.sh: {name} needs a value (see ./run.sh --help)")
      for name in ("--origins", "--tasks", "--shots", "--model", "--jobs", "--out", "--results", "--data-dir",
                   "--samples")],
    (["--origins", ""], "--origins needs a value"),
    (["--out", "--quick"], "--out needs a value"),
    (["--quick", "--model"], "--model needs a value"),
    (["--jobs", "abc"], "--jobs must be an integer from 1 to 9999, got 'abc'"),
    (["--jobs", "0"], "--jobs must be"),
    (["--jobs", "-1"], "--jobs must be"),
    (["--jobs", "010"], "--jobs must be"),  # bash arithmetic would read octal 8
    (["--jobs", "1.5"], "--jobs must be"),
    (["--jobs", "99999999999999999999"], "--jobs must be"),  # would wrap around to a negative number
    (["--jobs", "x[$(touch hacked)]"], "--jobs must be"),  # bash arithmetic would run it
    (["--origins", "0,x"], "--origins must be a comma list of origins 0..9 and ranges A-B, got '0,x'"),
    (["--origins", "5-2"], "--origins: the range 5-2 is empty (A-B needs A <= B)"),
    (["--origins", "10"], "--origins must be"),
    (["--origins", "0-10"], "--origins must be"),
    (["--origins", "-1"], "--origins must be"),
    (["--origins", "0,,1"], "--origins must be"),
    (["--origins", "1,"], "--origins must be"),
    (["--origins", "0\n1"], "--origins must be"),
    (["--origins", "0-2,1"], "--origins lists 1 twice"),
    (["--shots", "-1"], "--shots must be a comma list of integers >= 0, got '-1'"),
    (["--shots", "5,x"], "--shots must be"),
    (["--shots", "1.5"], "--shots must be"),
    (["--shots", "05"], "--shots must be"),  # would name the run rte_05shots, not rte_5shots
    (["--shots", "5,5"], "--shots lists 5 twice"),
    (["--tasks", "sst2,,cola"], "--tasks must be a comma list of task names"),
    (["--tasks", "sst2 cola"], "--tasks must be"),
    (["--tasks", "../x"], "--tasks must be"),
    (["--tasks", "sst2+cola"], "--tasks must be"),
    (["--tasks", "sst2,sst2"], "--tasks lists sst2 twice"),
    (["--bogus"], "run.sh: unknown option --bogus (see ./run.sh --help)"),
    (["0-2"], "unknown option 0-2"),
    (["--jobs=2"], "unknown option --jobs=2"),
    (["--quick", "--samples", "{tmp}/nowhere"], "which is not a folder (see --samples)"),
    (["--quick", *SAMPLES, "--tasks", "mnli"], "--quick prepares mnli from"),
    (["--quick", "--samples", "{tmp}/no vocabulary/data", "--tasks", "sst2"], "T5's vocabulary"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[repr(args) for args, _ in BAD])
def test_bad_input_is_one_line_and_exit_2_before_anything_runs(sandbox, args, message):
    process, calls = run(sandbox, *args)
    assert (process.returncode, process.stderr.count("\n")) == (2, 1), process.stderr
    assert message in process.stderr and process.stderr.startswith("run.sh: ")
    assert calls == [] and process.stdout == ""
    assert not (sandbox / "caller dir" / "hacked").exists()


def test_help_lists_exactly_the_options_run_sh_accepts(sandbox):
    process, _ = run(sandbox, "--help")
    assert process.returncode == 0 and process.stderr == ""
    listed = set(re.findall(r"^ {2}(-h, )?(--[a-z-]+)", process.stdout, re.M))
    listed = {name for _, name in listed} | {"-h"}
    source = open(RUN_SH).read()
    parsed = source[source.index("while [ $# -gt 0 ]"):source.index("done\n", source.index("while [ $# -gt 0 ]"))]
    accepted = {name for labels in re.findall(r"^ +(-[-a-z|]+)\)", parsed, re.M) for name in labels.split("|")}
    assert listed == accepted
    for name in accepted - {"-h", "--help", "--quick"}:  # each option of the help is known and takes a value
        assert f"{name} needs a value" in run(sandbox, name)[0].stderr


def test_paths_with_spaces_and_quotes_reach_tpv_as_one_argument_unchanged(sandbox):
    root = sandbox / HOSTILE
    out, results, data, samples = (f"{root}/runs", f"{root}/results", f"{root}/data", f"{sandbox}/shared data/data")
    process, calls = run(sandbox, "--quick", "--out", out, "--results", results, "--data-dir", data,
                         "--samples", samples, "--jobs", "2")
    assert process.returncode == 0, process.stdout + process.stderr
    model = f"{out}/tiny-t5"
    assert {call[1] for call in calls} == {"tiny-model", "prepare", "train", "add", "cross-origin", "similarity",
                                           "report"}
    for call in calls:
        command = call[1]
        assert option(call, "--data-dir") == (None if command == "tiny-model" else data)
        assert option(call, "--model") == (None if command == "tiny-model" else model)
        assert option(call, "--out") == (None if command in ("tiny-model", "prepare") else out)
        if command in ("cross-origin", "similarity", "report"):
            assert option(call, "--results") == results
        # no argument holds a piece of a path: each one is a whole path or none
        assert all(arg.startswith(str(sandbox)) or str(sandbox) not in arg and HOSTILE not in arg for arg in call)
    assert ["tpv.py", "tiny-model", model, "--spiece", f"{samples}/../assets/t5-spiece.model", "--force"] in calls
    assert sorted(c[2] for c in calls if c[1] == "prepare") == sorted(QUICK_TASKS)
    assert all(option(c, "--from") == f"{samples}/{c[2]}" for c in calls if c[1] == "prepare")
    assert os.path.isdir(f"{out}/logs") and os.path.exists(f"{out}/logs/failed.txt")


def test_relative_paths_are_relative_to_where_run_sh_is_started(sandbox):
    process, calls = run(sandbox, "--quick", "--out", "my runs", "--results", "res", "--data-dir", "d d",
                         "--samples", "../shared data/data", "--origins", "0", "--shots", "0")
    assert process.returncode == 0, process.stderr
    caller = sandbox / "caller dir"
    train = next(c for c in calls if c[1] == "train")
    assert (option(train, "--out"), option(train, "--data-dir")) == (f"{caller}/my runs", f"{caller}/d d")
    assert option(next(c for c in calls if c[1] == "report"), "--results") == f"{caller}/res"
    assert option(next(c for c in calls if c[1] == "prepare"), "--from").startswith(f"{caller}/../shared data/data/")
    assert (caller / "my runs" / "logs").is_dir()


@pytest.mark.parametrize("args, tasks, origins, shots", [
    ([], {"sst2", "cola", "trec", "sst2,cola", "rte"}, {"0", "1"}, {"0", "5"}),
    (["--tasks", "sst2,trec"], {"sst2", "trec"}, {"0", "1"}, set()),  # no few-shot group: cola is not trained
    (["--tasks", "sst2,cola", "--origins", "3,5-6", "--shots", "7"], {"sst2", "cola", "sst2,cola", "rte"},
     {"3", "5", "6"}, {"7"}),
    (["--origins", "4"], {"sst2", "cola", "trec", "sst2,cola", "rte"}, {"4"}, {"0", "5"}),
])
def test_quick_only_sets_defaults_for_what_is_not_given(sandbox, args, tasks, origins, shots):
    process, calls = run(sandbox, "--quick", *SAMPLES, "--out", "{tmp}/runs", *args)
    assert process.returncode == 0, process.stderr
    train = [c for c in calls if c[1] == "train"]
    assert {c[2] for c in train} == tasks
    assert {option(c, "--origin") for c in train} == origins
    assert {option(c, "--shots") for c in train} - {None} == shots
    if len(origins) > 1:
        assert option(next(c for c in calls if c[1] == "cross-origin"), "--origins") == ",".join(sorted(origins))
    else:
        assert "cross-origin" not in {c[1] for c in calls}


def test_quick_with_a_model_given_uses_it_and_writes_no_tiny_model(sandbox):
    process, calls = run(sandbox, "--quick", *SAMPLES, "--out", "{tmp}/runs", "--model", "google/flan-t5-base")
    assert process.returncode == 0, process.stderr
    assert "tiny-model" not in {c[1] for c in calls}
    assert {option(c, "--model") for c in calls} == {"google/flan-t5-base"}


def test_failed_tiny_model_stops_run_sh(sandbox):
    process, calls = run(sandbox, "--quick", *SAMPLES, "--out", "{tmp}/runs", fail="tiny-model")
    assert process.returncode == 1
    assert f"run.sh: tpv.py tiny-model could not write the tiny model to {sandbox}/runs/tiny-t5" in process.stderr
    assert [c[1] for c in calls] == ["tiny-model"]


@pytest.mark.parametrize("files, written", [
    ((), True), (("config.json",), True), (("config.json", "model.safetensors"), True),
    (("config.json", "model.safetensors", "spiece.model"), False)])
def test_tiny_model_is_written_unless_all_its_files_are_there(sandbox, files, written):
    model = sandbox / "runs" / "tiny-t5"
    model.mkdir(parents=True)
    for name in files:
        (model / name).write_text("x")
    process, calls = run(sandbox, "--quick", *SAMPLES, "--out", "{tmp}/runs", "--origins", "0")
    assert process.returncode == 0, process.stderr
    assert ("tiny-model" in {c[1] for c in calls}) == written


def test_failed_runs_are_listed_as_commands_to_paste(sandbox):
    out = f"{sandbox}/{HOSTILE}/runs"
    process, calls = run(sandbox, "--quick", *SAMPLES, "--out", out, "--tasks", "sst2", "--origins", "0",
                         fail="train")
    assert process.returncode == 1 and "1 step(s) failed" in process.stderr
    failed = open(f"{out}/logs/failed.txt").read().splitlines()
    assert [shlex.split(line) for line in failed] == [[str(sandbox / "fake python" / "python"), *c]
                                                      for c in calls if c[1] == "train"]
    assert "stub: failing on purpose" in open(f"{out}/logs/tiny-t5_origin_0_sst2.log").read()
