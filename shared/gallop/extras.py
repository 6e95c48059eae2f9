"""Which extra of `pip install gallop` brings which library. `pip install gallop` is the
client; the local stack, training and the CDK app come with extras, and what needs one
that is missing says which to install."""

from __future__ import annotations

import importlib.util

# What each extra brings that the code imports (pyproject.toml's optional dependencies).
REQUIRES = {
    "local": (
        "boto3",
        "fastapi",
        "mangum",
        "uvicorn",
        "sqlalchemy",
        "alembic",
        "psycopg",
        "pyarrow",
        "orjson",
        "aws_lambda_powertools",
        "moto",
        "onnxruntime",
    ),
    "train": ("lightgbm", "onnx", "onnxruntime", "scipy", "pyarrow", "boto3"),
    "infra": ("aws_cdk", "constructs", "cdk_nag"),
}
# A library -> the first extra that brings it.
EXTRA_OF = {m: extra for extra, modules in reversed(REQUIRES.items()) for m in modules}


class MissingExtra(ImportError):
    """A library of an extra that is not installed; the message says what to install."""


def require(extra: str, what: str) -> None:
    """MissingExtra, naming the extra, unless every library `what` needs from it is here."""
    missing = [m for m in REQUIRES[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(
            f"{what} needs {', '.join(missing)}, not installed: pip install 'gallop[{extra}]'"
        )


def missing_extra(exc: ModuleNotFoundError) -> MissingExtra | None:
    """The MissingExtra for an import that failed on a library an extra brings; None for
    any other module (a bug, to be shown as it is)."""
    module = (exc.name or "").split(".")[0]
    if module not in EXTRA_OF:
        return None
    return MissingExtra(f"{module} is not installed: pip install 'gallop[{EXTRA_OF[module]}]'")
