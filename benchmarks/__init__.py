"""Benchmarks of rlft (not part of the installed package): vs_trl.py, sampler.py, ablation.py, overlap.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run_child(script: str, args: list[str], pythonpath: list[str]) -> dict:
    """Run ``script`` in a fresh process with ``args`` plus ``--result PATH`` (1 torch thread, ``pythonpath``
    first on the path) and return the JSON it wrote there."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([p for p in (*pythonpath, os.environ.get("PYTHONPATH", "")) if p])}
    try:
        subprocess.run([sys.executable, script, *args, "--result", path], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.loads(Path(path).read_text())
    finally:
        os.unlink(path)
