"""Building a model version beside a Triton repository and renaming it in, with the configs that describe it: every
exporter (classifiers and language models, translation models, generation models) installs through here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from exporter.atomic import remove_stale, signals_deferred, staging_dir, swap_in, writing
from exporter.errors import HeadpruneError
from exporter.triton.layout import ModelRepository


def check_version(version: int | None) -> None:
    """Raises HeadpruneError unless ``version`` is None (next free version) or a positive integer."""
    if version is not None and version < 1:
        raise HeadpruneError(f"version {version} is not a positive integer", "give a version of 1 or higher")


@contextmanager
def version_staging(repository: ModelRepository, name: str, version: int) -> Iterator[Path]:
    """Yields an empty folder beside the repository (Triton loads every folder inside it) to build version ``version``
    of model ``name`` in; it is removed after the block unless install_version moved it in. Staging folders of
    killed runs are removed first."""
    with writing(repository.version_folder(name, version)):
        repository.root.mkdir(parents=True, exist_ok=True)
        remove_stale(repository.staging)  # any model's leftovers, not only this version's
        with staging_dir(repository.staging, f"{name}-{version}-") as staged:
            yield staged


def install_version(repository: ModelRepository, name: str, version: int, staged: Path) -> Path:
    """Renames the finished folder ``staged`` in as version ``version`` of model ``name`` (replacing that version);
    returns the version folder."""
    target = repository.version_folder(name, version)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        swap_in(staged, target)
    return target


def install_with_configs(
    repository: ModelRepository, name: str, version: int, staged: Path, write_configs: Callable[[], None]
) -> Path:
    """Renames ``staged`` in as version ``version`` of model ``name``, after ``write_configs()`` when that version is
    the one Triton serves (the highest) or the model has no config yet; returns the version folder.

    Signals wait until all is done, so the version and the configs describing it go in together; re-exporting an
    older version leaves the configs describing the served one."""
    serves = version >= max(repository.versions(name), default=0) or not repository.config_path(name).exists()
    with signals_deferred():
        if serves:
            write_configs()
        return install_version(repository, name, version, staged)
