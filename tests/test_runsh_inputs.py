"""run.sh's handling of its command line, with a stub in place of python: no training, seconds in all.

The stub ($PYTHON) appends its arguments (tpv.py or bench.py and what follows) as one JSON list a line to $STUB_LOG
and exits 0, or 1 when its command is $STUB_FAIL. run.sh is copied into a folder whose name holds a space, as a
repository checked out there would be, and run from another folder. The Slurm tests put a stub sbatch on PATH.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root, above tests/
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
    assert all(call[0] in ("tpv.py", "bench.py") for call in calls)
    return process, calls


def files_under(folder):
    return {os.path.join(d, name) for d, dirs, names in os.walk(folder) for name in dirs + names} - {
        str(folder / "calls.jsonl")}


def option(call, name):
    return call[call.index(name) + 1] if name in call else None


SAMPLES = ["--samples", "{tmp}/shared data/data"]
BAD = [
    *[([name], f"run.sh: {name} needs a value (see ./run.sh --help)")
      for name in ("--origins", "--tasks", "--shots", "--model", "--pack", "--jobs", "--out", "--results",
                   "--data-dir", "--samples", "--partition", "--time")],
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
    (["--pack", "0"], "--pack must be an integer from 1 to 9999, got '0'"),
    (["--pack", "abc"], "--pack must be"),
    (["--pack", "1.5"], "--pack must be"),
    (["--pack", "08"], "--pack must be"),
    (["--pack", "-1"], "--pack must be"),
    (["--plan", "--pack", "99999999999999999999"], "--pack must be"),
    (["--plan", "--slurm"], "--plan and --slurm are different things to do: give one"),
    (["--estimate", "--plan"], "--estimate and --plan are different"),
    (["--slurm", "--estimate"], "--slurm and --estimate are different"),
    (["--partition", "gpu"], "--partition is for --slurm (give --slurm too)"),
    (["--plan", "--time", "60"], "--time is for --slurm (give --slurm too)"),
    (["--slurm", "--partition", "gpu a100"], "--partition must be a partition name or a comma list of them"),
    (["--slurm", "--partition", "gpu\n#SBATCH --x"], "--partition must be"),
    (["--slurm", "--partition", "gpu,"], "--partition must be"),
    (["--slurm", "--partition", "$(touch hacked)"], "--partition must be"),
    (["--slurm", "--time", "1 day"], "--time must be a Slurm time limit: minutes, HH:MM:SS or D-HH:MM:SS, got '1 day'"),
    (["--slurm", "--time", "12:0"], "--time must be"),
    (["--slurm", "--time", "1-"], "--time must be"),
    (["--slurm", "--time", "12:00:00\n"], "--time must be"),
    (["--slurm", "--time", "12:00:00:00"], "--time must be"),
    (["--slurm", "--quick", "--samples", "{tmp}/nowhere"], "which is not a folder (see --samples)"),
    (["--slurm", "--quick", "--samples", "{tmp}/no vocabulary/data", "--tasks", "sst2"], "T5's vocabulary"),
    (["--estimate", "--quick", "--samples", "{tmp}/no vocabulary/data"], "T5's vocabulary"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[repr(args) for args, _ in BAD])
def test_bad_input_is_one_line_and_exit_2_before_anything_runs(sandbox, args, message):
    before = files_under(sandbox)
    process, calls = run(sandbox, *args)
    assert (process.returncode, process.stderr.count("\n")) == (2, 1), process.stderr
    assert message in process.stderr and process.stderr.startswith("run.sh: ")
    assert calls == [] and process.stdout == ""
    assert files_under(sandbox) == before  # nothing written: no logs, no tiny model, no Slurm scripts


def test_help_lists_exactly_the_options_run_sh_accepts(sandbox):
    process, _ = run(sandbox, "--help")
    assert process.returncode == 0 and process.stderr == ""
    listed = set(re.findall(r"^ {2}(-h, )?(--[a-z-]+)", process.stdout, re.M))
    listed = {name for _, name in listed} | {"-h"}
    source = open(RUN_SH).read()
    parsed = source[source.index("while [ $# -gt 0 ]"):source.index("done\n", source.index("while [ $# -gt 0 ]"))]
    accepted = {name for labels in re.findall(r"^ +(-[-a-z|]+)\)", parsed, re.M) for name in labels.split("|")}
    assert listed == accepted
    for name in accepted - {"-h", "--help", "--quick", "--mini", "--plan", "--slurm", "--estimate"}:  # no value
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
    assert {option(c, "--origins") for c in train} == {",".join(sorted(origins))}  # one pack: every origin
    assert all("--resume" in c and "--force" not in c and "--name" not in c for c in train)
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
    assert "stub: failing on purpose" in open(f"{out}/logs/tiny-t5_sst2.log").read()  # one log per pack


# -----------------------------------------------------------------------------
# the grid as packs, --plan, --slurm and --estimate

STAGES = ["model", "data", "sources", "multitask", "sums", "fewshot", "analysis", "report"]
DEFAULT_SOURCES = ["mnli", "qnli", "sst2", "yelp_polarity", "dbpedia", "trec"]
DEFAULT_PAIRS = {"mnli,qnli": ["scitail", "snli"], "dbpedia,trec": ["ag_news", "yahoo"],
                 "sst2,yelp_polarity": ["imdb", "sst5"]}


def plan(sandbox, *args):
    """--plan's lines as (stage, command) pairs; it must write nothing and run nothing."""
    before = files_under(sandbox)
    process, calls = run(sandbox, "--plan", *args)
    assert process.returncode == 0 and process.stderr == "", process.stderr
    assert calls == [] and files_under(sandbox) == before
    lines = [line.split(" ", 1) for line in process.stdout.splitlines()]
    assert all(len(line) == 2 for line in lines)
    return [(stage, command) for stage, command in lines]


def stages_in_order(lines):
    stages = [stage for stage, _ in lines]
    assert stages == sorted(stages, key=STAGES.index), "stages out of order"
    return {stage: [shlex.split(command) for s, command in lines if s == stage] for stage in STAGES}


def test_plan_prints_the_default_grid_one_pack_a_line_in_stage_order(sandbox):
    grid = stages_in_order(plan(sandbox))
    python = str(sandbox / "fake python" / "python")
    assert {stage: len(commands) for stage, commands in grid.items()} == {
        "model": 1, "data": 12, "sources": 6, "multitask": 3, "sums": 15 * 10, "fewshot": 6 * 10, "analysis": 2,
        "report": 1}
    assert all(command[:2] == [python, "tpv.py"] for commands in grid.values() for command in commands)
    assert grid["model"] == [[python, "tpv.py", "download", "t5-base"]]
    every = ",".join(map(str, range(10)))
    assert [c[3] for c in grid["sources"]] == DEFAULT_SOURCES
    assert [c[3] for c in grid["multitask"]] == list(DEFAULT_PAIRS)
    for command in grid["sources"] + grid["multitask"] + grid["fewshot"]:
        assert command[2] == "train" and option(command, "--origins") == every and "--resume" in command
        assert not {"--force", "--name", "--origin", "--pack"} & set(command)
    assert {(c[3], c[4], option(c, "--origin")) for c in grid["sums"]} == {
        (a, b, str(o)) for i, a in enumerate(DEFAULT_SOURCES) for b in DEFAULT_SOURCES[i + 1:] for o in range(10)}
    fewshot = {(c[3], option(c, "--shots")): [c[i + 1] for i, word in enumerate(c) if word == "--init"]
               for c in grid["fewshot"]}
    assert fewshot == {(target, str(n)): ["origin", *pair.split(","), pair, pair.replace(",", "+")]
                       for pair, targets in DEFAULT_PAIRS.items() for target in targets
                       for n in (0, 5, 10, 25, 50, 100, 250, 500, 750, 1000)}
    assert [c[2] for c in grid["analysis"] + grid["report"]] == ["cross-origin", "similarity", "report"]


def test_plan_follows_origins_tasks_shots_and_pack(sandbox):
    grid = stages_in_order(plan(sandbox, "--origins", "0-2,5", "--tasks", "mnli,qnli,sst2", "--shots", "0,100",
                                "--pack", "8", "--model", "t5-small", "--out", "{tmp}/o u t"))
    python, out = str(sandbox / "fake python" / "python"), f"{sandbox}/o u t"
    common = ["--model", "t5-small", "--out", out, "--data-dir", "data_cache"]
    pack = ["--origins", "0,1,2,5", "--resume", "--pack", "8", *common]
    assert grid["sources"] == [[python, "tpv.py", "train", task, *pack] for task in ("mnli", "qnli", "sst2")]
    assert grid["multitask"] == [[python, "tpv.py", "train", "mnli,qnli", *pack]]
    assert grid["fewshot"] == [[python, "tpv.py", "train", target, "--shots", n, "--init", "origin", "--init", "mnli",
                                "--init", "qnli", "--init", "mnli,qnli", "--init", "mnli+qnli", *pack]
                               for target in ("scitail", "snli") for n in ("0", "100")]
    assert len(grid["sums"]) == 3 * 4 and [c[3] for c in grid["data"]] == ["mnli", "qnli", "sst2", "scitail", "snli"]
    assert grid["sums"][0] == [python, "tpv.py", "add", "mnli", "qnli", "--origin", "0", *common]
    assert option(grid["analysis"][0], "--origins") == "0,1,2,5"
    # one origin: no cross-origin; no pair of the paper: no multi-task and no few-shot packs
    grid = stages_in_order(plan(sandbox, "--origins", "3", "--tasks", "sst2,trec"))
    assert (len(grid["multitask"]), len(grid["fewshot"]), len(grid["sums"])) == (0, 0, 1)
    assert [c[2] for c in grid["analysis"]] == ["similarity"]


def test_plan_lines_run_with_xargs_and_bash_c_give_tpv_the_same_words(sandbox):
    out = f"{sandbox}/{HOSTILE}/runs"
    lines = plan(sandbox, "--quick", "--out", out, "--samples", f"{sandbox}/shared data/data")
    model = f"{out}/tiny-t5"
    assert ("sources", [str(sandbox / "fake python" / "python"), "tpv.py", "train", "sst2", "--origins", "0,1",
                        "--resume", "--model", model, "--out", out, "--data-dir", "data_cache", "--max-steps", "12",
                        "--eval-every", "6", "--warmup", "2", "--log-every", "6", "--scoring", "rank"]
            ) in [(stage, shlex.split(command)) for stage, command in lines]
    # the commands of run.sh --help, from run.sh's folder, on a plan.txt there
    (sandbox / "my repo" / "plan.txt").write_text("".join(f"{stage} {command}\n" for stage, command in lines))
    shown = run(sandbox, "--help")[0].stdout.splitlines()
    first = shown.index("  ./run.sh --plan > plan.txt")
    loop = "\n".join(line[2:] for line in shown[first + 1:shown.index("  done", first) + 1])
    assert "xargs -d '\\n' -P 4" in loop
    log = sandbox / "calls.jsonl"
    env = {**os.environ, "STUB_LOG": str(log)}
    process = subprocess.run(["bash", "-c", loop], cwd=sandbox / "my repo", env=env, capture_output=True, text=True,
                             timeout=60)
    assert process.returncode == 0, process.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(calls) == sorted(shlex.split(command)[1:] for _, command in lines)
    if shutil.which("parallel"):  # GNU parallel, as --help shows it
        log.unlink()
        pipeline = next(line[2:] for line in shown if line.startswith("  awk '$1 == \"sources\"'"))
        assert "| parallel -j 4" in pipeline
        process = subprocess.run(["bash", "-c", pipeline], cwd=sandbox / "my repo", env=env, capture_output=True,
                                 text=True, timeout=60)
        assert process.returncode == 0, process.stderr
        assert sorted(json.loads(line) for line in log.read_text().splitlines()) == sorted(
            shlex.split(command)[1:] for stage, command in lines if stage == "sources")


def slurm_env(sandbox):
    """A stub sbatch first on PATH: it records its arguments in $SBATCH_LOG and answers JOB_ID;CLUSTER."""
    stub = sandbox / "fake slurm" / "sbatch"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(f"#!{sys.executable} -S\n"
                    "import json, os, sys\n"
                    "path = os.environ['SBATCH_LOG']\n"
                    "count = len(open(path).readlines()) if os.path.exists(path) else 0\n"
                    "with open(path, 'a') as f:\n"
                    "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
                    "print(f'{1000 + count};cluster')\n")
    stub.chmod(0o755)
    return {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "SBATCH_LOG": str(sandbox / "sbatch.jsonl"),
            "STUB_LOG": str(sandbox / "calls.jsonl")}


def test_slurm_writes_one_array_job_per_stage_chained_with_afterok(sandbox):
    out = f"{sandbox}/{HOSTILE}/runs"
    options = ["--out", out, "--origins", "0-2", "--shots", "0,5,10", "--pack", "4"]
    lines = plan(sandbox, *options)
    process, calls = run(sandbox, "--slurm", *options, "--partition", "gpu,gpu-long", "--time", "1-12:00:00")
    assert process.returncode == 0 and calls == [], process.stderr
    folder = f"{out}/slurm"
    assert shlex.split(process.stdout.split("submit them with: ")[1]) == ["bash", f"{folder}/submit.sh"]
    assert not os.path.exists(f"{out}/logs")  # submit.sh makes it: --slurm only writes its scripts
    arrays = ["sources", "multitask", "sums", "fewshot", "analysis", "report"]
    for name in [*arrays, "line", "submit"]:
        check = subprocess.run(["bash", "-n", f"{folder}/{name}.sh"], capture_output=True, text=True)
        assert check.returncode == 0, (name, check.stderr)
    for stage in STAGES:  # STAGE.plan holds the plan's lines of the stage, STAGE.done one line for each
        commands = [command for s, command in lines if s == stage]
        assert open(f"{folder}/{stage}.plan").read().splitlines() == commands
        assert len(open(f"{folder}/{stage}.done").read().splitlines()) == len(commands)
    for stage in arrays:
        script = open(f"{folder}/{stage}.sh").read()
        count = sum(s == stage for s, _ in lines)
        headers = re.findall(r"^#SBATCH (.*)$", script, re.M)
        assert headers == [f"--job-name=tpv-{stage}", f"--array=0-{count - 1}", "--gres=gpu:1",
                           "--signal=B:TERM@120", "--partition=gpu,gpu-long", "--time=1-12:00:00"], stage
    # submit.sh: the model and data stages here, then sbatch per stage after the stages it needs
    env = slurm_env(sandbox)
    process = subprocess.run(["bash", f"{folder}/submit.sh"], cwd=sandbox / "caller dir", env=env,
                             capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr
    ran = [json.loads(line) for line in open(sandbox / "calls.jsonl")]
    assert ran == [shlex.split(command)[1:] for stage, command in lines if stage in ("model", "data")]
    submitted = [json.loads(line) for line in open(sandbox / "sbatch.jsonl")]
    assert [call[-1] for call in submitted] == [f"{folder}/{stage}.sh" for stage in arrays]
    ids = {stage: str(1000 + i) for i, stage in enumerate(arrays)}
    needs = {"sources": [], "multitask": [], "sums": ["sources"], "fewshot": ["sources", "multitask"],
             "analysis": ["sources"], "report": ["sources", "multitask", "sums", "fewshot", "analysis"]}
    for stage, call in zip(arrays, submitted):
        assert "--parsable" in call and f"--output={out}/logs/slurm-{stage}-%A_%a.log" in call
        dependency = [a for a in call if a.startswith("--dependency=")]
        assert dependency == ([f"--dependency=afterok:{':'.join(ids[s] for s in needs[stage])}"] if needs[stage]
                              else [])
    assert os.path.isdir(f"{out}/logs") and "1005" in process.stdout


def test_slurm_array_task_runs_its_plan_line_unless_its_runs_finished(sandbox):
    out = f"{sandbox}/{HOSTILE}/runs"
    options = ["--quick", *SAMPLES, "--out", out]
    lines = plan(sandbox, *options)
    process, _ = run(sandbox, "--slurm", *options)
    assert process.returncode == 0, process.stderr
    env = slurm_env(sandbox)
    log = sandbox / "calls.jsonl"

    def task(stage, i):
        log.unlink(missing_ok=True)
        process = subprocess.run(["bash", f"{out}/slurm/{stage}.sh"], cwd="/", capture_output=True, text=True,
                                 env={**env, "SLURM_ARRAY_TASK_ID": str(i)}, timeout=60)
        assert process.returncode == 0, process.stderr
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    sources = [shlex.split(command)[1:] for stage, command in lines if stage == "sources"]
    assert [task("sources", i) for i in range(len(sources))] == [[call] for call in sources]
    for origin in (0, 1):  # sst2 finished on every origin: its array task does nothing
        os.makedirs(f"{out}/tiny-t5/origin_{origin}", exist_ok=True)
        open(f"{out}/tiny-t5/origin_{origin}/sst2.json", "w").close()
    assert sources[0][2] == "sst2" and task("sources", 0) == [] and task("sources", 1) == [sources[1]]
    assert task("report", 0) == [shlex.split(command)[1:] for stage, command in lines if stage == "report"]


def test_local_run_launches_the_packs_not_finished_with_resume_and_pack(sandbox):
    runs = sandbox / "runs" / "tiny-t5"
    for origin in (0, 1):
        (runs / f"origin_{origin}").mkdir(parents=True)
        (runs / f"origin_{origin}" / "sst2.json").write_text("{}")  # sst2: finished
        (runs / f"origin_{origin}" / "sst2+cola.json").write_text("{}")
        for init in ("", "_init-sst2", "_init-cola", "_init-sst2,cola", "_init-sst2+cola"):
            (runs / f"origin_{origin}" / f"rte_0shots{init}.json").write_text("{}")
    (runs / "origin_1" / "rte_5shots.json").write_text("{}")  # one run of the pack: the pack still runs
    process, calls = run(sandbox, "--quick", *SAMPLES, "--out", "{tmp}/runs", "--tasks", "sst2,cola", "--pack", "3",
                         "--jobs", "2")
    assert process.returncode == 0, process.stderr
    train = [c for c in calls if c[1] == "train"]
    assert sorted((c[2], option(c, "--shots")) for c in train) == [("cola", None), ("rte", "5"), ("sst2,cola", None)]
    assert all(option(c, "--origins") == "0,1" and option(c, "--pack") == "3" and "--resume" in c for c in train)
    assert [c for c in calls if c[1] == "add"] == []
    assert sorted(os.listdir(sandbox / "runs" / "logs")) == sorted(
        ["failed.txt", "finished.txt", "tiny-t5_cola.log", "tiny-t5_sst2,cola.log", "tiny-t5_rte_5shots.log", "cross-origin.log",
         "similarity.log"])


@pytest.mark.parametrize("args, model", [([], "t5-base"), (["--pack", "4", "--model", "t5-small"], "t5-small")])
def test_estimate_calls_bench_estimate_with_the_plan_and_passes_its_status(sandbox, args, model):
    """bench.py gets the plan on stdin (the stub does not read it; bench.py's tests price run.sh's plan)."""
    before = files_under(sandbox)
    process, calls = run(sandbox, "--estimate", *args)
    assert process.returncode == 0, process.stderr
    assert calls == [["bench.py", "estimate", "--plan", "-", "--model", model]]
    assert files_under(sandbox) == before  # no data, no logs
    process, calls = run(sandbox, "--estimate", *args, fail="estimate")
    assert process.returncode == 1 and len(calls) == 1


def test_estimate_with_quick_writes_the_tiny_model_first_and_no_data(sandbox):
    process, calls = run(sandbox, "--estimate", "--quick", *SAMPLES, "--out", "{tmp}/runs", "--origins", "0")
    assert process.returncode == 0, process.stderr
    model = f"{sandbox}/runs/tiny-t5"
    assert [c[:2] for c in calls] == [["tpv.py", "tiny-model"], ["bench.py", "estimate"]]
    assert calls[1] == ["bench.py", "estimate", "--plan", "-", "--model", model]
    assert not (sandbox / "runs" / "logs").exists()
