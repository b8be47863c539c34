"""
SIGTERM handled as Ctrl-C: kill, systemd and Slurm at a job's time limit send SIGTERM, and tpv then does what
Ctrl-C does (train saves its checkpoint, the locks are released, the temporary files removed), says so in one line
and exits with the signal's conventional status, 143 (tpv.py main).
"""
import signal
import sys
import threading


def handle_sigterm(handler):
    """Installs a SIGTERM handler; -> the one before it. Only the main thread may (tpv.main called from another
    thread keeps the handler it has)."""
    if threading.current_thread() is not threading.main_thread() or handler is None:
        return None
    return signal.signal(signal.SIGTERM, handler)


def on_terminate(terminated):
    """SIGTERM (kill, systemd, Slurm at a job's time limit) as Ctrl-C: KeyboardInterrupt unwinds the command, so
    train saves its checkpoint, the locks are released and the temporary files removed. A second SIGTERM while
    that happens is ignored (Slurm's SIGKILL still ends everything)."""
    if not terminated:
        terminated.append(signal.SIGTERM)
        raise KeyboardInterrupt


def leave_terminated(message):
    """One line, then exit status 143 (128 + SIGTERM), as a process the signal ended reports it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"tpv: terminated (SIGTERM): {message}", file=sys.stderr)
    sys.exit(128 + signal.SIGTERM)
