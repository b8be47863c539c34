"""Shared by test_tpv.py and tests/: pytest reads this before it imports any test module.

One CPU thread per test process (and the subprocesses the tests start, which inherit OMP_NUM_THREADS): the tests'
models are tiny, where a second thread buys nothing, and on a machine whose cores are busy two spinning threads per
process made some tests ten times slower. A value the caller sets wins.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: its thread pool reads it once

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
