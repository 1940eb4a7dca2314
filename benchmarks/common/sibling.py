"""Load another benchmark's ``run.py`` as a module of its own (every benchmark script is called run.py).

It lives in ``benchmarks/common/`` because ``benchmarks/`` itself must not go on ``sys.path``: its
``operators/`` folder would shadow the ``operators`` package.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]


def load_run(folder: str, script: str = "run.py"):
    """``benchmarks/<folder>/<script>`` as the module ``<folder>_<stem>`` (loaded once per process)."""
    name = f"{folder}_{Path(script).stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / folder / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
