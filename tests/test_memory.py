import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_settings():
    # In a child process: the settings are process-wide and must not leak into the test run.
    code = "from cdcore import memory; print(memory.reuse_freed_memory()); memory.release_freed_memory()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
