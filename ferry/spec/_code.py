"""``Code``: the code bundle a job's replicas run from, instead of the code in their image."""

from __future__ import annotations

import re

from pydantic import model_validator

from ferry.spec._base import Spec

__all__ = ["CODE_DIR", "CODE_VOLUME", "Code"]

CODE_VOLUME = "ferry-code"  # the emptyDir each replica unpacks the bundle into
CODE_DIR = "/ferry/code"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_SCHEMES = ("s3://", "mlflow-artifacts:/", "file:///")


class Code(Spec):
    """A bundle of the job's project, published once per digest (``ferry submit`` makes and
    uploads it, and sets this field): every replica fetches ``uri``, refuses it unless its
    sha256 is ``digest``, and runs the job's command inside it."""

    uri: str
    digest: str

    @model_validator(mode="after")
    def _consistent(self) -> Code:
        if not _DIGEST.fullmatch(self.digest):
            raise ValueError(f"digest must be sha256:<64 lower-case hex digits> (got {self.digest!r})")
        if not self.uri.startswith(_SCHEMES):
            raise ValueError(f"uri must be s3://bucket/..., mlflow-artifacts:/... or file:///... (got {self.uri!r})")
        name = f"sha256-{self.digest.partition(':')[2]}.tar.gz"
        if not self.uri.endswith("/" + name):
            raise ValueError(f"uri must name the bundle of this digest, .../{name} (got {self.uri!r})")
        return self

    @property
    def short(self) -> str:
        """The digest's first 32 hex digits: what a label holds (63 characters at most)."""
        return self.digest.partition(":")[2][:32]
