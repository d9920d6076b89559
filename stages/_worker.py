"""Imported first by the stages that torchrun launches (`cache_latents`, `train`, `sample`).

torchrun starts each worker in a session of its own, so a `kill -9` of `dvc repro` and torchrun
would leave the workers running, still writing into the work folder that the next run resumes
from. On Linux a worker therefore asks the kernel to kill it when its launcher dies
(`PR_SET_PDEATHSIG`), before the stage imports torch; one whose launcher died even earlier has
been handed to init and ends at once. Outside torchrun this does nothing.
"""


import os
import sys

if "TORCHELASTIC_RUN_ID" in os.environ and sys.platform.startswith("linux"):
    import ctypes
    import signal

    _PR_SET_PDEATHSIG = 1
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() == 1:  # orphaned before the call
        os._exit(1)
