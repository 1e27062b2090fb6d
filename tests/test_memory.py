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
