"""Nothing GPU-specific is imported on a machine without it (issue 37, part 4): the `gpu` extra is optional.

Every framewatch module is imported, one after another, in a fresh interpreter that watches the import system: no
module may import, or even try to import (a guarded `try: import cupy`), CuPy, NVIDIA's Python packages
(nvImageCodec is `nvidia.nvimgcodec`), PyNvVideoCodec, PyTorch, TensorRT, CUDA's Python bindings or ONNX Runtime.
The one exception is the ONNX detector (`framewatch/detector/onnx.py`): it imports ONNX Runtime when it is imported,
and is itself imported only on use (`detector/service.py` imports it for `--model`), so it is checked on its own.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from importlib.util import find_spec
from typing import TypedDict

import framewatch
from tests.conftest import ROOT

ONNX_DETECTOR = "framewatch.detector.onnx"
GPU_PACKAGES = {"cupy", "cupyx", "cupy_backends", "nvidia", "PyNvVideoCodec", "torch", "torchvision", "tensorrt",
                "pycuda", "cuda", "pynvml", "onnxruntime"}

# Imports the modules named in argv[2] (a JSON list) in order; prints, per module, the GPU-ish modules it tried to
# import (a finder first on sys.meta_path sees every import of a module not yet loaded) or that appeared.
PROBE = r"""
import importlib, importlib.abc, json, sys
watched = set(json.loads(sys.argv[1]))
asked = []

def gpu(name):
    return name.partition(".")[0] in watched

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if gpu(name):
            asked.append(name)
        return None  # the import goes on as usual

sys.meta_path.insert(0, Watch())
found = {}
for module in json.loads(sys.argv[2]):
    before = {name for name in sys.modules if gpu(name)}
    asked.clear()
    error = None
    try:
        importlib.import_module(module)
    except ImportError as e:
        error = f"{type(e).__name__}: {e} (name={e.name})"
    loaded = sorted({name for name in sys.modules if gpu(name)} - before)
    if asked or loaded or error:
        found[module] = {"asked": sorted(set(asked)), "loaded": loaded, "error": error}
print(json.dumps(found))
"""


class Seen(TypedDict):
    asked: list[str]  # GPU-ish modules the import tried to load
    loaded: list[str]  # those that were loaded
    error: str | None  # the module's own ImportError


def framewatch_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(framewatch.__path__, "framewatch."))


def probe(modules: list[str]) -> dict[str, Seen]:
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(sorted(GPU_PACKAGES)), json.dumps(modules)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    found: dict[str, Seen] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def test_no_module_imports_anything_gpu_specific() -> None:
    modules = framewatch_modules()
    assert len(modules) > 50 and {"framewatch.cli", "framewatch.detector.service", "framewatch.agents.pipeline",
                                   "framewatch.streams.source", ONNX_DETECTOR} <= set(modules), modules
    found = probe([m for m in modules if m != ONNX_DETECTOR])
    assert found == {}, f"modules that import (or try to import) GPU packages or fail to import: {found}"


def test_the_onnx_detector_imports_onnx_runtime_and_nothing_else_gpu_specific() -> None:
    found = probe([ONNX_DETECTOR])
    seen = found[ONNX_DETECTOR]
    assert {name.partition(".")[0] for name in seen["asked"] + seen["loaded"]} == {"onnxruntime"}, seen
    if find_spec("onnxruntime") is None:  # no `onnx` (or `gpu`) extra: the import fails naming what is missing
        assert seen["error"] is not None and "name=onnxruntime" in seen["error"], seen
    else:
        assert seen["error"] is None and "onnxruntime" in seen["loaded"], seen

