"""Build the Lambda artifacts and report their unzipped sizes against Lambda's limits.

    .venv/bin/python layers/build.py [--out build] [--code-only]

- build/lambda/<function>/: handler.py and the gallop package (zip functions' code)
- build/layers/<layer>/python/: pinned manylinux wheels for python3.12 on x86_64,
  installed with --no-deps from layers/requirements-<layer>.txt, stripped of tests,
  caches and type stubs (boto3 is never included: the runtime has it)
- build/images/data/: the build context of the container image that the ingest,
  features and monitor functions run (pandas + pyarrow do not fit a zip function), with its
  dependencies installed, so the image build is a COPY
- build/images/training/: the build context of the SageMaker training image (the
  training_jobs, the gallop package, its entry point train_entry.py and LightGBM,
  SciPy, onnx and onnxruntime on top of the data image's packages)
- build/sizes.json and the printed table: each function's and image's unzipped size,
  layers included; exits 1 if a budget is exceeded
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ROOT / "layers"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
PYTHON = "3.12"
MB = 1024 * 1024
ZIP_LIMIT_MB = 250  # Lambda: function + layers, unzipped
IMAGE_LIMIT_MB = 10 * 1024  # Lambda container images and ours alike: 10 GB
INFERENCE_BUDGET_MB = 150  # ours: the predict function stays lean (a quick cold start)

# function -> (layers, kind); kind "zip" or "image"
FUNCTIONS = {
    "api": (["web", "db", "numpy"], "zip"),
    # The inference path: onnxruntime, numpy and the web framework, no database client.
    "predict": (["web", "numpy", "inference"], "zip"),
    "migrate": (["web", "db"], "zip"),
    "ingest": (["data"], "image"),
    "features": (["data"], "image"),
    # Reads captured JSON Lines and Parquet results, and reaches the database.
    "monitor": (["data"], "image"),
    "training": (["web", "db"], "zip"),
}
ZIP_LAYERS = ("web", "db", "numpy", "inference")
# Unzipped-size limits other than Lambda's own (by default ZIP_LIMIT_MB or IMAGE_LIMIT_MB).
BUDGETS_MB = {"predict": INFERENCE_BUDGET_MB}
DOCKERFILE = """\
# ingest, features and monitor: one image, the handler chosen by the function's CMD.
FROM public.ecr.aws/lambda/python:3.12
COPY site-packages/ ${LAMBDA_TASK_ROOT}/
COPY gallop/ ${LAMBDA_TASK_ROOT}/gallop/
COPY functions/ ${LAMBDA_TASK_ROOT}/
CMD ["ingest.handler.handler"]
"""
TRAINING_DOCKERFILE = """\
# The SageMaker training image: `docker run <image> train` runs train_entry.py, which
# runs python -m training_jobs.<job> for the hyperparameter `job` (base or stack).
FROM public.ecr.aws/docker/library/python:3.12-slim-bookworm
# LightGBM's wheel links the system's OpenMP runtime.
RUN apt-get update \\
    && apt-get install -y --no-install-recommends libgomp1 \\
    && rm -rf /var/lib/apt/lists/*
ENV PYTHONPATH=/opt/gallop:/opt/gallop/site-packages \\
    PYTHONUNBUFFERED=1 \\
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/gallop
COPY site-packages/ /opt/gallop/site-packages/
COPY gallop/ /opt/gallop/gallop/
COPY training_jobs/ /opt/gallop/training_jobs/
COPY train_entry.py /opt/gallop/train_entry.py
ENTRYPOINT ["python", "/opt/gallop/train_entry.py"]
"""
STRIP_DIRS = {"__pycache__", "tests", "test", "testing"}
# What the python3.12 Lambda runtime itself provides.
RUNTIME_PROVIDED = {
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    "python-dateutil",
    "six",
    "urllib3",
}
# Left out of the training image on purpose, though a package there names them: CatBoost's
# plotting widgets (graphviz, matplotlib, plotly); the jobs draw nothing, and it imports
# and fits without them.
TRAINING_IMAGE_LEFT_OUT = frozenset({"graphviz", "matplotlib", "plotly"})
LAMBDA_MARKERS = {
    "python_version": PYTHON,
    "python_full_version": PYTHON + ".0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "extra": "",
}
STRIP_SUFFIXES = {".pyc", ".pyi"}


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def strip(tree: Path, keep: frozenset[str] = frozenset()) -> None:
    for path in sorted(tree.rglob("*"), reverse=True):
        if path.is_dir() and path.name in STRIP_DIRS - keep:
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.suffix in STRIP_SUFFIXES:
            path.unlink()
    for name in ("boto3", "botocore", "s3transfer"):
        shutil.rmtree(tree / name, ignore_errors=True)


def copy_package(source: Path, target: Path) -> None:
    shutil.copytree(
        source,
        target / source.name,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        dirs_exist_ok=True,
    )


def copy_gallop(target: Path) -> None:
    copy_package(ROOT / "shared" / "gallop", target)


def build_code(out: Path, function: str) -> Path:
    target = out / "lambda" / function
    shutil.rmtree(target, ignore_errors=True)
    # exist_ok: a bundle's import check may still be writing __pycache__ into it, which
    # rmtree then cannot remove; the copies below overwrite whatever stays.
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "functions" / function / "handler.py", target / "handler.py")
    copy_gallop(target)
    return target


def install(requirements: Path, target: Path, keep: frozenset[str] = frozenset()) -> None:
    """pip install the pinned wheels for Lambda's platform; reused while the pins (and
    what stripping keeps) hold."""
    stamp = target / ".requirements.sha256"
    pinned = _flatten(requirements)
    if keep:  # (so the stamps of trees stripped in full stay as they were)
        pinned += "\nkept: " + " ".join(sorted(keep))
    digest = hashlib.sha256(pinned.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        strip(target, keep)
        return
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-compile",  # Lambda bundles carry no bytecode: stripping drops __pycache__
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        PYTHON,
        "--target",
        str(target),
        "-r",
        str(requirements),
    ]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command, check=True)
    strip(target, keep)
    stamp.write_text(digest)


def _flatten(requirements: Path) -> str:
    lines = []
    for line in requirements.read_text().splitlines():
        if line.startswith("-r "):
            lines.append(_flatten(requirements.parent / line.split(maxsplit=1)[1]))
        elif line.strip() and not line.startswith("#"):
            lines.append(line.strip())
    return "\n".join(lines)


def build_layer(out: Path, layer: str) -> Path:
    target = out / "layers" / layer / "python"
    install(LAYERS / f"requirements-{layer}.txt", target)
    return target.parent


def build_image_context(out: Path, with_dependencies: bool) -> Path:
    context = out / "images" / "data"
    for part in ("gallop", "functions"):
        shutil.rmtree(context / part, ignore_errors=True)
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(DOCKERFILE)
    copy_gallop(context)
    for function in [f for f, (_, kind) in FUNCTIONS.items() if kind == "image"]:
        (context / "functions" / function).mkdir(parents=True)
        shutil.copy2(
            ROOT / "functions" / function / "handler.py",
            context / "functions" / function / "handler.py",
        )
        (context / "functions" / function / "__init__.py").write_text("")
    _dependencies(context, "data", with_dependencies)
    return context


def build_training_context(out: Path, with_dependencies: bool) -> Path:
    """What the training image copies: the jobs, the library and the entry point."""
    context = out / "images" / "training"
    for part in ("gallop", "training_jobs"):
        shutil.rmtree(context / part, ignore_errors=True)
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(TRAINING_DOCKERFILE)
    shutil.copy2(LAYERS / "train_entry.py", context / "train_entry.py")
    copy_gallop(context)
    copy_package(ROOT / "training_jobs", context)
    _dependencies(context, "training", with_dependencies)
    return context


def _dependencies(context: Path, requirements: str, with_dependencies: bool) -> None:
    # SciPy imports numpy.testing at run time (the data image's packages do not).
    keep = frozenset({"testing"}) if requirements == "training" else frozenset()
    if with_dependencies:
        install(LAYERS / f"requirements-{requirements}.txt", context / "site-packages", keep)
    else:
        (context / "site-packages").mkdir(exist_ok=True)


def missing_requirements(
    trees: list[Path], provided: frozenset[str] | set[str] = RUNTIME_PROVIDED
) -> list[str]:
    """Requirements (for python3.12 on Linux x86_64, no extras) that no package in these
    trees, nor what the runtime provides, satisfies: what --no-deps pins must not leave
    out."""
    from email.parser import Parser

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    installed: dict[str, str] = {}
    metadata = []
    for tree in trees:
        for info in tree.rglob("*.dist-info/METADATA"):
            message = Parser().parsestr(info.read_text(encoding="utf-8", errors="replace"))
            installed[canonicalize_name(message["Name"])] = message["Version"]
            metadata.append(message)
    problems = []
    for message in metadata:
        for line in message.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate(LAMBDA_MARKERS):
                continue
            name = canonicalize_name(requirement.name)
            if name in provided:
                continue
            version = installed.get(name)
            if version is None or not requirement.specifier.contains(version, prereleases=True):
                problems.append(f"{message['Name']} needs {requirement} (found: {version})")
    return sorted(set(problems))


def report(out: Path) -> dict[str, dict]:
    sizes: dict[str, dict] = {}
    for function, (layers, kind) in FUNCTIONS.items():
        if kind == "zip":
            code = size_of(out / "lambda" / function)
            layer_sizes = {layer: size_of(out / "layers" / layer) for layer in layers}
        else:
            context = out / "images" / "data"
            code = size_of(context / "gallop") + size_of(context / "functions")
            layer_sizes = {"image dependencies": size_of(context / "site-packages")}
        total = code + sum(layer_sizes.values())
        limit = BUDGETS_MB.get(function, ZIP_LIMIT_MB if kind == "zip" else IMAGE_LIMIT_MB)
        sizes[function] = {
            "kind": kind,
            "code_mb": round(code / MB, 1),
            "layers_mb": {k: round(v / MB, 1) for k, v in layer_sizes.items()},
            "total_mb": round(total / MB, 1),
            "limit_mb": limit,
            "within_limit": total / MB <= limit,
        }
    for function, (layers, kind) in FUNCTIONS.items():
        trees = (
            [out / "layers" / layer for layer in layers]
            if kind == "zip"
            else [out / "images" / "data" / "site-packages"]
        )
        sizes[function]["missing"] = missing_requirements(trees)
    sizes["training image"] = training_image_size(out / "images" / "training")
    return sizes


def training_image_size(context: Path) -> dict[str, object]:
    """SageMaker, not Lambda, runs it: the only bound is our own 10 GB for an image. Its
    Python is not Lambda's, so nothing counts as provided (boto3 is not needed), but for
    what it leaves out on purpose."""
    code = sum(size_of(context / part) for part in ("gallop", "training_jobs"))
    code += (context / "train_entry.py").stat().st_size
    dependencies = size_of(context / "site-packages")
    total = code + dependencies
    return {
        "kind": "image",
        "code_mb": round(code / MB, 1),
        "layers_mb": {"image dependencies": round(dependencies / MB, 1)},
        "total_mb": round(total / MB, 1),
        "limit_mb": IMAGE_LIMIT_MB,
        "within_limit": total / MB <= IMAGE_LIMIT_MB,
        "missing": missing_requirements(
            [context / "site-packages"], provided=TRAINING_IMAGE_LEFT_OUT
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build")
    parser.add_argument(
        "--code-only",
        action="store_true",
        help="function code only (what synthesis needs); no wheels, no report",
    )
    args = parser.parse_args()
    for function, (_, kind) in FUNCTIONS.items():
        if kind == "zip":
            build_code(args.out, function)
    build_image_context(args.out, with_dependencies=not args.code_only)
    build_training_context(args.out, with_dependencies=not args.code_only)
    if args.code_only:
        for layer in ZIP_LAYERS:
            (args.out / "layers" / layer / "python").mkdir(parents=True, exist_ok=True)
        return 0
    for layer in ZIP_LAYERS:
        build_layer(args.out, layer)
    sizes = report(args.out)
    (args.out / "sizes.json").write_text(json.dumps(sizes, indent=2))
    print(f"{'function':<16}{'kind':<7}{'code MB':>9}  {'layers (MB)':<42}{'total MB':>9}  limit")
    for function, row in sizes.items():
        layers = ", ".join(f"{k} {v}" for k, v in row["layers_mb"].items())
        limit = "10 GB image" if row["kind"] == "image" else f"{row['limit_mb']} MB"
        if function in BUDGETS_MB:
            limit += " budget"
        verdict = "ok" if row["within_limit"] else "OVER"
        print(
            f"{function:<16}{row['kind']:<7}{row['code_mb']:>9}  {layers:<42}"
            f"{row['total_mb']:>9}  {limit} {verdict}"
        )
    missing = {f: row["missing"] for f, row in sizes.items() if row["missing"]}
    for function, problems in missing.items():
        print(f"{function}: incomplete dependencies: " + "; ".join(problems))
    return 0 if all(row["within_limit"] for row in sizes.values()) and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
