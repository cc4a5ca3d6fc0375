"""Named kill points for the resume tests: ``MMMED_SELFTRAIN_KILL_AT=<point>`` SIGKILLs the process there.

A SIGKILL runs no ``finally`` and no handler, as a preempted job or an out-of-memory kill would not; the test then
re-runs the same command without the variable and compares the result with an uninterrupted run. Points:
``sample:<round>:<batch>`` (after a sampling batch's file is written), ``written:<round>`` (after the round's
rationales.jsonl), ``train:<phase>:<step>`` (at the end of a training step, before its checkpoint).
"""

from __future__ import annotations

import os
import signal

KILL_AT = "MMMED_SELFTRAIN_KILL_AT"


def kill_point(point: str) -> None:
    """SIGKILL this process if ``MMMED_SELFTRAIN_KILL_AT`` names ``point``."""
    if os.environ.get(KILL_AT) == point:
        os.kill(os.getpid(), signal.SIGKILL)
