import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.integration  # a subprocess
def test_glibc_takes_the_settings():
    # In a child process: the settings are process-wide and must not leak into the test run.
    code = "from cdcore import memory; print(memory.reuse_freed_memory()); memory.release_freed_memory()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.integration  # a subprocess
def test_heap_guard_trims_only_once_memory_has_crept():
    # A child process: it changes process-wide allocator settings.
    code = """
import numpy as np
from cdcore import memory
memory.reuse_freed_memory()
guard = memory.HeapGuard(slack=0.1, settle_steps=2)
guard.start()
base = memory.resident_bytes()
guard.step_done()                        # settling...
grown = np.ones(64 << 20, np.uint8)      # the heap grows back after a trim: still settling
guard.step_done()                        # settled at base + 64 MB: no trim
settled = memory.resident_bytes()
block = np.ones(400 << 20, np.uint8)     # touched, then freed into the heap, which keeps it
del block
kept = memory.resident_bytes()
guard.step_done()                        # 400 MB past where it settled: trims
trimmed = memory.resident_bytes()
small = np.ones(16 << 20, np.uint8)
del small
guard.step_done()
guard.step_done()                        # settles again, within the slack: keeps the heap
print((settled - base) >> 20, (kept - base) >> 20, (trimmed - base) >> 20, (memory.resident_bytes() - base) >> 20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    settled, kept, trimmed, last = map(int, out.split())
    assert settled >= 60  # the second step was part of settling, not a trim
    assert kept >= 400 and trimmed < 100 and last >= 74


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.integration  # a subprocess
def test_heap_guard_trims_for_a_new_pass_but_not_for_turns_or_blocks_waiting_to_be_written():
    code = """
import numpy as np
from cdcore import memory
memory.reuse_freed_memory()
trims = []
memory.release_freed_memory = lambda: trims.append(step)   # counts, and keeps the heap as it is
guard = memory.HeapGuard(slack=0.1, settle_steps=2)
step = "start"; guard.start()
step = "a1"; guard.step_done("a")                # a new kind: trims, then settles
step = "a2"; guard.step_done("a")
step = "b1"; guard.step_done("b")                # another new kind, taking turns with a
step = "b2"; guard.step_done("b")
waiting = np.ones(300 << 20, np.uint8)           # a result waiting for the writer thread
guard.hold(waiting.nbytes)
step = "a3"; guard.step_done("a")                # settled, but the bytes in flight are allowed
guard.hold(-waiting.nbytes); del waiting         # written: freed into the heap, which keeps it
step = "b3"; guard.step_done("b")                # the most in flight since the trim still counts
step = "a4"; guard.step_done("a", last=True)     # a's pass is over
step = "a5"; guard.step_done("a")                # a pass of kind a again: a new pass, trims
step = "a6"; guard.step_done("a")
crept = np.ones(400 << 20, np.uint8)
step = "a7"; guard.step_done("a")                # 400 MB past where it settled: trims
print(" ".join(trims))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["start", "a1", "b1", "a5", "a7"]
