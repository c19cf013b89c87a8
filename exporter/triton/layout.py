"""The layout of a Triton model repository, owned by one small object.

``<root>/<name>/config.pbtxt``, ``<root>/<name>/<version>/model.onnx`` and the
version's ``deployment.json``; the text front end of model ``name`` is ``<name>_text`` (``<name>_image``
for an image model), and a language model's generation model ``<name>_generate``;
a translation model exported as ``name`` is served as ``<name>_translate``.
Versions are built beside the repository (Triton tries to load every folder inside
it, hidden ones included) and renamed in. Light to import: no PyTorch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import HeadpruneError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
TEXT_SUFFIX = "_text"
IMAGE_SUFFIX = "_image"
GENERATE_SUFFIX = "_generate"
TRANSLATE_SUFFIX = "_translate"


def text_model_name(name: str) -> str:
    """Returns the name of the text front end of model ``name``."""
    return f"{name}{TEXT_SUFFIX}"


def image_model_name(name: str) -> str:
    """Returns the name of the image front end of image model ``name``."""
    return f"{name}{IMAGE_SUFFIX}"


def generate_model_name(name: str) -> str:
    """Returns the name of the generation model of language model ``name``."""
    return f"{name}{GENERATE_SUFFIX}"


def translate_model_name(name: str) -> str:
    """Returns the name of the translation model exported under ``name``."""
    return f"{name}{TRANSLATE_SUFFIX}"


def check_name(name: str) -> str:
    """Returns ``name`` if a Triton repository can hold it; raises HeadpruneError otherwise."""
    if not NAME_PATTERN.fullmatch(name) or len(name) > 100:
        raise HeadpruneError(
            f"model name {name!r} is not usable in a Triton repository",
            "use up to 100 letters, digits, '_', '-' and '.', starting with a letter or digit",
        )
    return name


@dataclass(frozen=True)
class ModelRepository:
    """A Triton model repository on disk."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def folder(self, name: str) -> Path:
        """Returns the folder of model ``name``."""
        return self.root / check_name(name)

    def config_path(self, name: str) -> Path:
        """Returns the path of a model's config.pbtxt."""
        return self.folder(name) / CONFIG_FILE

    def versions(self, name: str) -> list[int]:
        """Returns the version numbers (numeric subfolders) of a model, none if it does not exist."""
        folder = self.folder(name)
        return (
            sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()) if folder.is_dir() else []
        )

    def served_version(self, name: str) -> int:
        """Returns the version Triton serves under its default policy (the highest); raises HeadpruneError if none."""
        versions = self.versions(name)
        if not versions:
            raise HeadpruneError(
                f"model '{name}' has no version in '{self.root}'",
                f"export it into that repository under the name '{name}'",
            )
        return versions[-1]

    def version_folder(self, name: str, version: int) -> Path:
        """Returns the folder of one version of a model."""
        return self.folder(name) / str(version)

    def models(self) -> list[str]:
        """Returns the names of the models the repository holds (folders with a config.pbtxt), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.parent.name for p in self.root.glob(f"*/{CONFIG_FILE}") if NAME_PATTERN.fullmatch(p.parent.name)
        )

    def deployment_models(self, name: str) -> list[str]:
        """Returns the models that serve deployment ``name``: the model itself and its front ends, or its translation
        model; none when the repository does not hold it."""
        held = set(self.models())
        related = (
            name,
            text_model_name(name),
            image_model_name(name),
            generate_model_name(name),
            translate_model_name(name),
        )
        return [model for model in related if model in held]

    def deployments(self) -> list[str]:
        """Returns the names of the deployments the repository holds: each model that is not another's front end or
        generation model, and each translation model without its suffix."""
        held = set(self.models())
        names = []
        for model in sorted(held):
            if model.endswith(TRANSLATE_SUFFIX):
                names.append(model.removesuffix(TRANSLATE_SUFFIX))
            elif not any(
                model.endswith(suffix) and model.removesuffix(suffix) in held
                for suffix in (TEXT_SUFFIX, IMAGE_SUFFIX, GENERATE_SUFFIX)
            ):
                names.append(model)
        return sorted(set(names))

    @property
    def staging(self) -> Path:
        """Returns the folder beside the repository where versions are built before they are renamed in."""
        resolved = self.root.resolve()
        return resolved.parent / f".{resolved.name}.staging"
