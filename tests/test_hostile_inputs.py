"""
Bad inputs, round three (issue 20), one table per class: lost work, locks, full disks, SIGTERM, damaged pack
checkpoints, missing config keys, foreign files, run.sh. Every bad case ends with exit status 2 (143 for
SIGTERM), one line on stderr, no traceback, and every file written earlier byte-identical afterwards (md5), except
a run's checkpoint and lock, which SIGTERM handles as Ctrl-C does.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import data
import prompts
import tpv
from support import files
from test_tpv import (HERE, PEFT, SPIECE, adapter, checkpoint_file, cli_outcome, finished, needs_shared,  # noqa: F401
                      pack_checkpoint, run_file, tiny, train_args, write_bytes)

NO_SPACE = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'


def md5s(folder):
    """{path: md5} of every file under `folder`, and any temporary folder (a temporary file left behind shows up
    too; the empty folder of a run that a lock made does not)."""
    found = {}
    for root, dirs, names in os.walk(folder):
        found |= {os.path.join(root, d): "folder" for d in dirs if d.endswith((".tmp", ".old"))}
        for name in names:
            path = os.path.join(root, name)
            found[path] = "link" if os.path.islink(path) else hashlib.md5(open(path, "rb").read()).hexdigest()
    return found


def one_line(code, err, message, expected=2):
    assert code == expected and message in err and err.count("\n") == 1 and "Traceback" not in err, (code, err)


def run_case(finished, tiny, tmp_path, capsys, command, setup, message, monkeypatch=None, patch=None):
    """Runs `tpv.py command` in this process on a copy of the finished runs: one line, exit 2, nothing changed."""
    out = tmp_path / "runs"
    shutil.copytree(finished, out)
    if setup:
        setup(str(out), str(tmp_path))
    before = md5s(out)
    argv = command.format(tmp=tmp_path, runs=out, model=tiny / "model").split()
    common = {"tiny-model": [], "info": [], "download-data": ["--model", str(tiny / "model")]}.get(
        argv[0], ["--model", str(tiny / "model"), "--out", str(out), "--data-dir", str(tiny / "data")])
    if patch:
        patch(monkeypatch)
    code, err = cli_outcome(argv[:1] + common + argv[1:], capsys)
    one_line(code, err, message)
    assert md5s(out) == before
    return err


def symlink(target, link):
    os.symlink(target, link)


# -----------------------------------------------------------------------------
# 1 lost work: a writer never replaces what it did not write

LOST_WORK = [
    ("tiny-model over a regular file", "tiny-model {runs}/notes.txt --force --spiece " + SPIECE,
     lambda o, t: write_bytes(f"{o}/notes.txt", b"my notes"), "is a file, not a model folder"),
    ("tiny-model over a run folder, --force", "tiny-model {runs}/model/origin_0 --force --spiece " + SPIECE, None,
     "which tiny-model does not write"),
    ("tiny-model over a link", "tiny-model {runs}/link --force --spiece " + SPIECE,
     lambda o, t: symlink(f"{o}/model", f"{o}/link"), "is a link, not a model folder"),
    ("export into a path that is a file", "export sst2 --peft {runs}/notes.txt/a",
     lambda o, t: write_bytes(f"{o}/notes.txt", b"my notes"), "a part of the path is a file"),
    ("import over a prompt path that is a folder", "import {tmp}/a --task dirp --force",
     lambda o, t: (adapter(f"{t}/a", PEFT), os.makedirs(run_file(o, "dirp.safetensors"))),
     "is a folder, not the file tpv writes"),
]


@needs_shared
@pytest.mark.parametrize("case, command, setup, message", LOST_WORK, ids=[c[0] for c in LOST_WORK])
def test_lost_work_is_refused(finished, tiny, tmp_path, capsys, case, command, setup, message):
    run_case(finished, tiny, tmp_path, capsys, command, setup, message)


def test_atomic_write_never_replaces_another_kind_of_path(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(files.FileError, match="is a file, not the folder"):
        files.atomic_write(str(tmp_path / "file"), lambda tmp: None, folder=True)
    (tmp_path / "folder").mkdir()
    with pytest.raises(files.FileError, match="is a folder, not the file"):
        files.write_text(str(tmp_path / "folder"), "x")
    assert (tmp_path / "file").read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["file", "folder"]


# -----------------------------------------------------------------------------
# 2 locks: a writer identified well enough to tell live, dead and reused pids

def me_but(**changes):
    return json.dumps({**files.identity(), **changes})


def parent():
    return json.dumps(files.identity(os.getppid()))


LOCKS = [  # (case, the lock's content, None: taken over, or the refusal's words)
    ("a dead pid", lambda: me_but(pid=999999999), None),
    ("an older tpv's dead pid", lambda: "999999999", None),
    ("this process's pid, from before a restart", lambda: me_but(start=1), None),
    ("an older tpv's lock holding this process's pid", lambda: str(os.getpid()), None),
    ("pid 1, started at another time", lambda: json.dumps({**files.identity(1), "start": -5}), None),
    ("a pid of an earlier boot", lambda: json.dumps({**files.identity(os.getppid()), "boot": "earlier"}), None),
    ("a live writer", parent, "is writing this run now; wait for it"),
    ("an older tpv's live pid", lambda: str(os.getppid()), "is writing this run, or the lock is stale"),
    ("an empty lock", lambda: "", "names no process tpv can identify"),
    ("a garbage lock", lambda: "\x00garbage", "names no process tpv can identify"),
    ("pid 0", lambda: "0", "names no process tpv can identify"),
    ("a writer on another host", lambda: json.dumps({**files.identity(), "host": "elsewhere"}),
     "on the host elsewhere is writing this run, or was"),
]


@pytest.mark.parametrize("case, content, refusal", LOCKS, ids=[c[0] for c in LOCKS])
def test_locks_tell_live_dead_and_unknown_writers(tmp_path, case, content, refusal):
    path, lock = str(tmp_path / "run.safetensors"), str(tmp_path / "run.safetensors.lock")
    write_bytes(lock, content().encode())
    if refusal is None:
        with files.exclusive(path):
            assert json.loads(open(lock).read()) == files.identity()
        assert os.listdir(tmp_path) == []  # released, and no temporary file
    else:
        before = open(lock, "rb").read()
        with pytest.raises(files.FileError) as e:
            with files.exclusive(path):
                pass
        assert refusal in str(e.value) and "\n" not in str(e.value)
        if "wait for it" not in refusal:
            assert f"delete {lock} and run again" in str(e.value)  # named, with how to remove it safely
        assert open(lock, "rb").read() == before and os.listdir(tmp_path) == ["run.safetensors.lock"]


@needs_shared
def test_a_lock_left_by_this_pid_before_a_restart_is_taken_over_by_the_cli(finished, tiny, tmp_path, capsys):
    out = tmp_path / "runs"
    shutil.copytree(finished, out)
    write_bytes(run_file(out, "again.safetensors.lock"), me_but(start=1).encode())
    code, err = cli_outcome(["train", "sst2", "--name", "again", "--shots", "0", "--model", str(tiny / "model"),
                             "--out", str(out), "--data-dir", str(tiny / "data"), "--scoring", "rank"], capsys)
    assert code == 0, err
    assert not os.path.exists(run_file(out, "again.safetensors.lock"))


# -----------------------------------------------------------------------------
# 3 a failed write (a full disk, read-only, no permission) is one line naming the file and the cause

def failing_save_file(real):
    """safetensors' save_file on a disk that fills up half way: some bytes written, then its error."""
    from safetensors import SafetensorError
    def save(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise SafetensorError(NO_SPACE)
    return save


def no_space(*modules):
    def patch(monkeypatch):
        for module in modules:
            monkeypatch.setattr(module, "save_file", failing_save_file(module.save_file))
    return patch


def read_only_text(monkeypatch):
    def write(chunks):
        def fail(tmp):
            open(tmp, "w").close()
            raise OSError(30, "Read-only file system", tmp)  # errno.EROFS
        return fail
    monkeypatch.setattr(files, "text_writer", write)


def import_modules():
    from support import interchange, resume
    return interchange, resume


FULL_DISK = [
    ("a prompt file", "import {tmp}/a --task sst2 --force", lambda o, t: adapter(f"{t}/a", PEFT),
     lambda: no_space(prompts), "cannot write {runs}/model/origin_0/sst2.safetensors: no space left on the device"),
    ("a checkpoint", "train sst2 --name full --max-steps 4 --eval-every 2 --warmup 1 --scoring rank", None,
     lambda: no_space(import_modules()[1]), "no space left on the device; free some space"),
    ("an adapter", "export sst2 --peft {runs}/adapter", lambda o, t: os.makedirs(f"{o}/adapter"),
     lambda: no_space(import_modules()[0]),
     "cannot write {runs}/adapter/adapter_model.safetensors: no space left"),
    ("a results table on a read-only disk", "similarity sst2 rte --results {runs}/results",
     lambda o, t: os.makedirs(f"{o}/results"),
     lambda: read_only_text, "the file system is read-only; choose a writable folder"),
]


@needs_shared
@pytest.mark.parametrize("case, command, setup, patch, message", FULL_DISK, ids=[c[0] for c in FULL_DISK])
def test_failed_writes_are_one_line_and_leave_the_old_file(finished, tiny, tmp_path, capsys, monkeypatch, case,
                                                           command, setup, patch, message):
    run_case(finished, tiny, tmp_path, capsys, command, setup, message.format(runs=tmp_path / "runs"),
             monkeypatch, patch())


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (root only), for real ENOSPC."""
    folder = tmp_path / "small disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def fill(folder):
    try:
        with open(folder / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
    except OSError:
        pass  # full


@needs_shared
def test_a_real_full_disk(finished, tiny, full_disk, capsys):
    # a model larger than the disk: safetensors' writer fails half way
    code, err = cli_outcome(["tiny-model", str(full_disk / "m"), "--spiece", SPIECE], capsys)
    one_line(code, err, f"cannot write {full_disk / 'm'}: no space left on the device")
    assert os.listdir(full_disk) == []
    # a disk full from the start: the adapter, then its lock-free JSON; an old adapter stays as it was
    fill(full_disk)
    before = md5s(full_disk)
    common = ["--model", str(tiny / "model"), "--out", str(finished), "--data-dir", str(tiny / "data")]
    code, err = cli_outcome(["export", "sst2", "--peft", str(full_disk / "a"), *common], capsys)
    assert code == 2 and "no space left on the device" in err and err.count("\n") == 1, err
    assert md5s(full_disk) == before


# -----------------------------------------------------------------------------
# 4 SIGTERM is Ctrl-C: checkpoint, locks released, one line, exit 143; --resume gives the same prompts

def sigterm_at(target, call):
    """Python for a subprocess: tpv.main, with SIGTERM sent to itself during the call-th call of target
    (module.function), a real signal delivered as kill, systemd or Slurm deliver it."""
    module, function = target.rsplit(".", 1)
    return (f"import os, signal, sys; sys.path.insert(0, {HERE!r}); import {module}, tpv\n"
            f"real, calls = {module}.{function}, []\n"
            f"def hooked(*a, **k):\n"
            f"    calls.append(1)\n"
            f"    if len(calls) == {call}:\n"
            f"        os.kill(os.getpid(), signal.SIGTERM)\n"
            f"    return real(*a, **k)\n"
            f"{module}.{function} = hooked\n"
            f"tpv.main(sys.argv[1:])\n")


PACK = ["--origins", "0,1", "--max-steps", "20", "--eval-every", "10", "--warmup", "2", "--scoring", "rank"]

SIGTERM = [  # (case, what the signal interrupts, at which call)
    ("during training", "model_t5.run_losses", 15),
    ("during validation", "evaluation.validation_losses", 2),
    ("during the final evaluation", "evaluation.evaluate_all", 1),
    ("during the writes, between two runs' files", "prompts.save_prompt", 2),
]


@pytest.fixture(scope="session")
def uninterrupted(tiny, built_once):
    """The pack trained without a signal, in this process (one copy for all test processes)."""
    return built_once("uninterrupted", lambda out: tpv.main(train_args(tiny, out, *PACK)))


@needs_shared
@pytest.mark.parametrize("case, target, call", SIGTERM, ids=[c[0] for c in SIGTERM])
def test_sigterm_saves_releases_and_resumes_bit_identical(tiny, uninterrupted, tmp_path, capsys, case, target, call):
    """The signal to a real process (its exit status and last line are the point); the resume, which checks what
    the checkpoint holds, runs in this process."""
    args = train_args(tiny, tmp_path, *PACK)
    stopped = subprocess.run([sys.executable, "-c", sigterm_at(target, call), *args], capture_output=True, text=True,
                             cwd=HERE, timeout=300)
    last = stopped.stderr.strip().splitlines()[-1] if stopped.stderr.strip() else ""
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert last.startswith("tpv: terminated (SIGTERM): ") and "Traceback" not in stopped.stderr, stopped.stderr
    assert "--resume" in last
    model_folder = tmp_path / "model"
    assert not [p for p in md5s(model_folder) if p.endswith((".lock", ".tmp"))]  # locks released, nothing half
    assert os.path.exists(checkpoint_file(tmp_path, "origin_0/sst2", "origin_1/sst2"))
    code, err = cli_outcome([*args, "--resume"], capsys)
    assert code == 0, err
    for origin in (0, 1):
        name = os.path.join("model", f"origin_{origin}", "sst2")
        a, b = (prompts.load_prompt(os.path.join(folder, name + ".safetensors"))[0]
                for folder in (uninterrupted, tmp_path))
        assert torch.equal(a, b), (case, origin)
        test = lambda folder: json.load(open(os.path.join(folder, name + ".json")))["test"]
        assert test(uninterrupted) == test(tmp_path)


# -----------------------------------------------------------------------------
# 5 a damaged pack checkpoint, resumed with the original command: named as unreadable, with a way that works

PACKED = ["origin_0/rte_5shots", "origin_1/rte_5shots"]
RESUME = "train rte --shots 5 --origins 0,1 --max-steps 4 --eval-every 2 --warmup 1 --scoring rank --resume"


def damaged(how):
    def setup(out, tmp):
        pack_checkpoint(out, PACKED)
        path = checkpoint_file(out, *PACKED)
        content = open(path, "rb").read()
        if how == "folder":
            os.remove(path)
            os.makedirs(path)
        elif how == "no state keys":
            save_file({"prompt": torch.zeros(2, 50, 32)}, path, metadata={"state": json.dumps({"runs": PACKED})})
        else:
            write_bytes(path, {"empty": b"", "truncated": content[:300], "cut at the end": content[:-100]}[how])
    return setup


DAMAGED = [
    ("empty", RESUME, damaged("empty"), "(an empty file); its progress is lost: delete it, then run the same command"),
    ("truncated", RESUME, damaged("truncated"), "300 bytes, cut short or damaged"),
    ("cut at the end", RESUME, damaged("cut at the end"), "cut short or damaged"),
    ("a folder", RESUME, damaged("folder"), "(a folder, not a checkpoint file); its progress is lost: remove that"),
    ("a state without its keys", RESUME, damaged("no state keys"), "its state lacks args"),
]


@needs_shared
@pytest.mark.parametrize("case, command, setup, message", DAMAGED, ids=[c[0] for c in DAMAGED])
def test_damaged_pack_checkpoints_are_named_unreadable(finished, tiny, tmp_path, capsys, case, command, setup, message):
    err = run_case(finished, tiny, tmp_path, capsys, command, setup, message)
    assert "not a readable tpv checkpoint" in err and "different arguments" not in err and "--force" not in err


@needs_shared
def test_a_damaged_checkpoint_of_another_pack_stops_no_other_command(finished, tiny, tmp_path, capsys):
    """One run of the damaged pack trained alone (--force) is trained; the damaged file is left as it was, for the
    command that resumes it to report."""
    out = tmp_path / "runs"
    shutil.copytree(finished, out)
    damaged("truncated")(str(out), str(tmp_path))
    before = open(checkpoint_file(out, *PACKED), "rb").read()
    code, err = cli_outcome(["train", "rte", "--shots", "5", "--origin", "0", "--max-steps", "4", "--force",
                             "--model", str(tiny / "model"), "--out", str(out), "--data-dir", str(tiny / "data")],
                            capsys)
    assert code == 0, err
    assert open(checkpoint_file(out, *PACKED), "rb").read() == before


# -----------------------------------------------------------------------------
# 6 a config.json without a key the weights' shapes depend on

LLAMA = {"model_type": "llama", "vocab_size": 32128, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 4}


def config_without(model, key, base=None):
    """A copy of the tiny model at tmp/m whose config.json (T5's, or `base`) lacks `key`."""
    def setup(out, tmp):
        shutil.copytree(model, f"{tmp}/m")
        config = dict(base) if base else json.load(open(f"{tmp}/m/config.json"))
        del config[key]
        write_bytes(f"{tmp}/m/config.json", json.dumps(config).encode())
    return setup


MISSING_KEYS = [(f"T5 without {key}", key, None) for key in
                ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets")]
MISSING_KEYS += [(f"Llama without {key}", key, LLAMA) for key in
                 ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")]


@needs_shared
@pytest.mark.parametrize("case, key, base", MISSING_KEYS, ids=[c[0] for c in MISSING_KEYS])
def test_config_keys_the_shapes_depend_on_are_required(finished, tiny, tmp_path, capsys, case, key, base):
    run_case(finished, tiny, tmp_path, capsys, "info --model {tmp}/m", config_without(str(tiny / "model"), key, base),
             f"config.json: has no {key}, which the weights' shapes depend on")


# -----------------------------------------------------------------------------
# 7 foreign files: refused as their own tools refuse them, in tpv's words

class NotATensor:
    pass


FOREIGN = [
    ("adapter rows disagreeing with num_virtual_tokens", "import {tmp}/a --task n",
     lambda o, t: adapter(f"{t}/a", PEFT, rows=60), "prompt_embeddings has shape (60, 32), but its adapter_config.json"),
    ("a seq2seq adapter of one submodule's rows", "import {tmp}/a --task n",
     lambda o, t: adapter(f"{t}/a", {**PEFT, "task_type": "SEQ_2_SEQ_LM"}), "implies (100, d)"),
    ("token_dim disagreeing", "import {tmp}/a --task n", lambda o, t: adapter(f"{t}/a", {**PEFT, "token_dim": 64}),
     "implies (50, 64)"),
    ("an adapter without prompt_embeddings", "import {tmp}/a --task n",
     lambda o, t: (adapter(f"{t}/a", PEFT), save_file({"other": torch.zeros(2)}, f"{t}/a/adapter_model.safetensors")),
     "has no prompt_embeddings tensor (it holds other)"),
    ("a pickle holding objects", "import {tmp}/p.bin --task n",
     lambda o, t: torch.save({"prompt_embeddings": torch.zeros(50, 32), "x": NotATensor()}, f"{t}/p.bin"),
     "holds a pickle tpv does not load: only tensors in plain dicts and lists are read"),
    ("an empty .bin", "import {tmp}/p.bin --task n", lambda o, t: write_bytes(f"{t}/p.bin", b""),
     "it is empty or ends early"),
    ("a text file as .bin", "import {tmp}/p.bin --task n", lambda o, t: write_bytes(f"{t}/p.bin", b"hello"),
     "its bytes are no pickle"),
    ("a truncated .bin", "import {tmp}/p.bin --task n",
     lambda o, t: (torch.save(torch.zeros(50, 32), f"{t}/p.bin"),
                   write_bytes(f"{t}/p.bin", open(f"{t}/p.bin", "rb").read()[:200])), "not a PyTorch file, or a damaged"),
]


@needs_shared
@pytest.mark.parametrize("case, command, setup, message", FOREIGN, ids=[c[0] for c in FOREIGN])
def test_foreign_files_are_refused_in_tpvs_words(finished, tiny, tmp_path, capsys, case, command, setup, message):
    err = run_case(finished, tiny, tmp_path, capsys, command, setup, message)
    for misleading in ("weights_only", "EOFError", "KeyError", "trust the source"):
        assert misleading not in err


def test_convert_refuses_a_pickle_in_tpvs_words(tmp_path, capsys):
    torch.save({"w": torch.zeros(2), "x": NotATensor()}, tmp_path / "pytorch_model.bin")
    code, err = cli_outcome(["convert", str(tmp_path)], capsys)
    one_line(code, err, "holds a pickle tpv does not load")
    assert "weights_only" not in err and os.listdir(tmp_path) == ["pytorch_model.bin"]


# -----------------------------------------------------------------------------
# 8 run.sh checks every value it passes on before the first command

RUN_SH = [
    (["--plan", "--tasks", "mnli,bogus"], "--tasks: unknown task 'bogus'; known tasks: mnli"),
    (["--quick", "--tasks", "sst2,Sst2"], "--tasks: unknown task 'Sst2'"),
    (["--slurm", "--time", "25:61:00"], "--time: 61 is not a number of minutes or seconds"),
    (["--slurm", "--time", "30:60"], "--time: 60 is not a number of minutes or seconds"),
    (["--slurm", "--time", "1-24:00:00"], "--time: 24 is not a number of hours (0-23) after the days"),
    (["--slurm", "--time", "1-99999999999999999999"], "is not a number of hours"),
    (["--plan", "--out", "{tmp}/file"], "--out: {tmp}/file is a file, not a folder"),
    (["--plan", "--results", "{tmp}/file"], "--results: {tmp}/file is a file, not a folder"),
    (["--plan", "--data-dir", "{tmp}/file"], "--data-dir: {tmp}/file is a file, not a folder"),
]


@pytest.mark.parametrize("args, message", RUN_SH, ids=[" ".join(a) for a, _ in RUN_SH])
def test_run_sh_refuses_bad_values_before_the_first_command(tmp_path, args, message):
    (tmp_path / "file").write_text("mine")
    before = md5s(tmp_path)
    env = {**os.environ, "PYTHON": "false"}  # a command that ran would fail: none may run
    done = subprocess.run(["bash", os.path.join(HERE, "run.sh"), *[a.format(tmp=tmp_path) for a in args]],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("run.sh: ") and done.stderr.count("\n") == 1, done.stderr
    assert message.format(tmp=tmp_path) in done.stderr and done.stdout == ""
    assert md5s(tmp_path) == before


def test_run_sh_knows_tpvs_tasks():
    line = next(line for line in open(os.path.join(HERE, "run.sh")) if line.startswith("KNOWN_TASKS="))
    assert sorted(line.split('"')[1].split()) == sorted(data.TASKS)


# -----------------------------------------------------------------------------
# the debatable ones, decided: --prompt-len at most what an origin holds, whatever the init; text: needs a text

@pytest.mark.parametrize("argv, message", [
    (["train", "sst2", "--init", "random", "--prompt-len", "5001"], "--prompt-len: must be at most 5,000"),
    (["train", "sst2", "--init", "text:"], "--init: text: holds no text"),
    (["train", "sst2", "--init", "text:   "], "--init: text: holds no text"),
])
def test_debatable_inputs_decided(argv, message, capsys):
    one_line(*cli_outcome(argv, capsys), message)
