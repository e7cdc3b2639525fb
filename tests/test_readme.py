"""The README's first Python example runs as written, in a fresh process in an empty folder."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_first_python_example_runs(tmp_path):
    block = re.search(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)
    if block is None:
        pytest.skip(f"{README.name} has no ```python block yet")
    (tmp_path / "example.py").write_text(block.group(1))
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
