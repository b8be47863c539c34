"""Shared by test_tpv.py and tests/: pytest reads this before it imports any test module.

One CPU thread per test process (and the subprocesses the tests start, which inherit OMP_NUM_THREADS): the tests'
models are tiny, where a second thread buys nothing, and on a machine whose cores are busy two spinning threads per
process made some tests ten times slower. A value the caller sets wins.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: its thread pool reads it once

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


import contextlib  # noqa: E402
import fcntl  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def cli_in_process(request, monkeypatch):
    """The test module's run_cli(*args, env=None) runs `tpv.py ARGS` as tpv.main in this process: the same
    CompletedProcess (exit status, stdout, stderr), without a Python and torch start per command. For the tests that
    check what a command computes and says; a real `python tpv.py` still runs in the tests of the command line as a
    process (exit status, one-line errors with no traceback, signals, downloads)."""
    import tpv
    here = request.module.HERE

    def run_cli(*args, env=None):
        out, err = io.StringIO(), io.StringIO()
        with monkeypatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            patch.chdir(here)
            try:
                tpv.main([str(a) for a in args])
                code = 0
            except SystemExit as e:  # as the interpreter turns it into an exit status
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
                if not isinstance(e.code, (int, type(None))):
                    print(e.code, file=sys.stderr)
        return subprocess.CompletedProcess([sys.executable, "tpv.py", *args], code, out.getvalue(), err.getvalue())
    monkeypatch.setattr(request.module, "run_cli", run_cli)



@pytest.fixture(scope="session")
def built_once(tmp_path_factory):
    """built_once(name, build) -> the folder `name`, built once for the whole test command however many test
    processes ask for it (-n auto starts one per core, and each would build its own session fixtures). It lies in
    the temporary folder that the processes of one pytest command share (with xdist, each process's base
    temporary folder is in it). The first to take name.lock calls build(folder); the others wait for the lock,
    then find the folder and the mark of a finished build. A build that failed half way left no mark, and is
    started again from an empty folder. For the session fixtures the tests only read, or copy before they change
    anything."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent

    def once(name, build):
        folder, built = base / name, base / f"{name}.built"
        with open(base / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
            if not built.exists():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                build(folder)
                built.touch()
        return folder
    return once
