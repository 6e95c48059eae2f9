"""The wheel as a user installs it, in a fresh virtual environment outside the checkout:
without extras it is a light client; with [train,local] it trains a generated file.

Slow by nature (a wheel build and two installs, from pip's cache): one environment for
both steps, no byte-compiling, the smallest training run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the wheel is built from (a copy, so no build/ or egg-info lands in the checkout).
SOURCES = ("pyproject.toml", "README.md", "shared", "training_jobs", "functions")
HEAVY = ("lightgbm", "moto", "uvicorn", "onnxruntime", "boto3", "fastapi", "sqlalchemy")


def run(*command: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Nothing from this checkout or its virtualenv may leak into the fresh environment.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True
    )
    if check and done.returncode != 0:
        pytest.fail(f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def pip_install(python: Path, requirement: str, cwd: Path) -> None:
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile",
        requirement, cwd=cwd)  # fmt: skip


@pytest.mark.packaging
def test_the_wheel_is_a_light_client_and_with_its_extras_trains(tmp_path: Path) -> None:
    # GIVEN the wheel, built from a copy of the sources
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", "dist", "./src",
        cwd=tmp_path)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("gallop-*.whl")
    venv.create(tmp_path / "venv", with_pip=False)
    python, gallop = tmp_path / "venv" / "bin" / "python", tmp_path / "venv" / "bin" / "gallop"

    # WHEN it is installed without extras
    pip_install(python, str(wheel), cwd=tmp_path)
    # THEN gallop.Client imports without LightGBM, moto, uvicorn or the other heavy ones,
    # which are not even installed
    check = (
        "import gallop, importlib.util, sys; gallop.Client; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules or importlib.util.find_spec(m)))"
    )
    assert run(python, "-c", check, cwd=tmp_path).stdout.strip() == "[]"
    # AND a command that needs an extra says which
    run(gallop, "synth", "races", "--races", "40", "--seed", "3", "--out", "races.csv",
        cwd=tmp_path)  # fmt: skip
    spec = ROOT / "shared" / "gallop" / "specs" / "races.yaml"
    train = ("train", "--data", "races.csv", "--spec", spec, "--out", "model")
    refused = run(gallop, *train, "--bases", "lambdarank", cwd=tmp_path, check=False)
    assert refused.returncode == 2
    assert "pip install 'gallop[train]'" in refused.stderr
    refused = run(gallop, "serve", "--state-dir", "state", cwd=tmp_path, check=False)
    assert refused.returncode == 2
    assert "pip install 'gallop[local]'" in refused.stderr

    # WHEN the extras are added to the same environment
    pip_install(python, f"{wheel}[train,local]", cwd=tmp_path)
    # THEN it trains the file, running the training jobs from the wheel
    run(gallop, *train, "--bases", "lambdarank", "--set", "num_boost_round=10",
        "--set", "folds=2", cwd=tmp_path)  # fmt: skip
    loaded = "import gallop, sys; print(gallop.load_model(sys.argv[1]).task)"
    assert run(python, "-c", loaded, "model", cwd=tmp_path).stdout.strip() == "ranking"
    # AND the local stack finds the Lambda handlers the wheel installs
    where = "from gallop.local.lambda_runtime import FUNCTIONS_DIR as d; print(d)"
    functions = Path(run(python, "-c", where, cwd=tmp_path).stdout.strip())
    assert functions.is_relative_to(tmp_path / "venv")
    assert (functions / "ingest" / "handler.py").is_file()
