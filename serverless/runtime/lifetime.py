"""Child processes of the runtime end with their parent, even when it is killed with SIGKILL (no
chance to stop them), so a restarted platform never finds a second set of processors running."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """Get ``sig`` when process ``parent_pid`` ends; at once if it already has."""
    if sys.platform.startswith("linux"):
        # The kernel signals us when the parent exits, however it exits.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:  # elsewhere a thread notices the re-parenting
        threading.Thread(target=_watch, args=(parent_pid, sig), daemon=True, name="die-with-parent").start()
    if os.getppid() != parent_pid:  # the parent died before the request above took effect
        os.kill(os.getpid(), sig)


def _watch(parent_pid: int, sig: signal.Signals) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os.kill(os.getpid(), sig)
