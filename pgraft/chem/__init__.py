"""Molecules as tensors and back (the ``molecules`` task): a graph codec over RDKit, and the
chemistry the molecule rewards and metrics share.

RDKit is an optional extra (``pip install pgraft[molecules]``); :func:`require_rdkit` names it
when it is missing, and nothing outside the molecule task imports this package.
"""

from __future__ import annotations

import importlib.util

from ..errors import PgraftError

EXTRA_HINT = "install pgraft[molecules] (pip install torch==2.13.0 'pgraft[molecules]', or `make test`)"


class MissingExtraError(PgraftError, ImportError):
    """An optional extra that a task needs is not installed."""


def require(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(f"{what} needs the package {module!r}: {EXTRA_HINT}")


def require_rdkit() -> None:
    require("rdkit", "the molecules task")
