"""The images Ferry's manifests name, in one place: ``<registry>/ferry-<component>:<tag>``.

``FERRY_IMAGE_REGISTRY`` (default ``ghcr.io/ferry-ml``) and ``FERRY_IMAGE_TAG`` (default Ferry's
version) set them for ``ferry render``/``ferry deploy``; the Helm chart's ``images.registry`` and
``images.tag`` set the same names in the cluster and pass them to the operator, so the chart and
the rendered manifests never disagree. Each component is built from a Dockerfile in the
repository: ``images/train`` (``-cpu`` variant: ``--build-arg VARIANT=cpu``), ``images/serve``,
``images/mlflow`` and ``operator/``.
"""

from __future__ import annotations

from typing import Literal

from ferry import settings

__all__ = ["COMPONENTS", "Component", "DEFAULT_REGISTRY", "image"]

Component = Literal["train", "serve", "operator", "mlflow"]
COMPONENTS: tuple[Component, ...] = ("train", "serve", "operator", "mlflow")
DEFAULT_REGISTRY = "ghcr.io/ferry-ml"


def image(component: Component, variant: str | None = None) -> str:
    """The reference of one of Ferry's images, as the current settings name it; ``variant``
    (``cpu`` for the training image) is appended to the tag."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown image {component!r}; Ferry builds {', '.join(COMPONENTS)}")
    from ferry import __version__

    registry = (settings.FERRY_IMAGE_REGISTRY.get() or DEFAULT_REGISTRY).rstrip("/")
    tag = settings.FERRY_IMAGE_TAG.get() or __version__
    return f"{registry}/ferry-{component}:{tag}{'-' + variant if variant else ''}"
