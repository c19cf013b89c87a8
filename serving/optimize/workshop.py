"""Making candidates: re-scored pruning plans per level, pruned and distilled checkpoints, exports into the work
repository. Everything made is kept under the optimization's folder, so a rerun reuses it."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from exporter.data import read_examples
from exporter.onnx.quantize import MIN_AGREEMENT
from exporter.progress import Phases, no_phases
from exporter.tasks import TASKS
from exporter.triton.config import DeploymentOptions
from serving.optimize.levers import INT8, applies
from serving.optimize.search import Candidate, OptimizeSettings, load_plans, save_plans, served_models


class Workshop:
    """Builds each candidate the search asks for (``make``), reusing what an earlier run left in ``settings.out``."""

    def __init__(
        self,
        settings: OptimizeSettings,
        task: str,
        phases: Phases = no_phases,
        say: Callable[[str], None] = lambda _: None,
    ):
        self.settings, self.task, self.phases, self.say = settings, task, phases, say
        self.repo = settings.out / "repo"
        self.seconds: dict[str, float] = {}
        self._plans: dict[float, dict] | None = None

    def examples(self, path: Path, max_examples: int | None = None) -> list[dict]:
        """Returns the examples of a data file of the model's task (a seeded subset of ``max_examples``), a
        classifier's labels checked against the model's."""
        from exporter.pruning.checkpoint import model_config

        settings = self.settings
        return read_examples(
            path,
            self.task,
            settings.columns,
            max_examples,
            settings.seed,
            settings.encoding,
            config=model_config(settings.model) if self.task == "classification" else None,
        )

    def plans(self) -> dict[float, dict]:
        """Returns {level: head plan dict}: heads pruned by importance re-scored before every step (on the training
        data), with the masked model's dev quality at each level recorded in plans.json."""
        if self._plans is not None:
            return self._plans
        path = self.settings.out / "plans.json"
        if not path.exists():
            self._plans = self._rescored_plans(path)
        else:
            self._plans = load_plans(path)[0]
        return self._plans

    def _rescored_plans(self, path: Path) -> dict[float, dict]:
        from exporter.evaluation.experiments import pruning_curve
        from exporter.evaluation.quality import Evaluator
        from exporter.pruning.checkpoint import load_model, load_tokenizer
        from exporter.pruning.inventory import build_inventory
        from exporter.pruning.scoring import compute_importance

        settings = self.settings
        began = time.monotonic()
        model, tokenizer = load_model(settings.model), load_tokenizer(settings.model)
        scoring = self.examples(settings.train, settings.score_examples)
        rescoring = scoring[: settings.rescore_examples]
        evaluator = Evaluator(model, tokenizer, self.examples(settings.dev), replay=True)

        def scored(removed):
            if removed is None:
                return compute_importance(model, tokenizer, scoring)
            return compute_importance(model, tokenizer, rescoring, removed=removed)

        advance = self.phases("re-scored importance and masked dev quality (levels)", len(settings.levels) + 1)
        curve = pruning_curve(
            evaluator,
            build_inventory(model),
            scored,
            settings.step,
            rescore=True,
            progress=advance,
            up_to=settings.max_level,
        )
        by_level = {round(point["fraction"], 6): point for point in curve.points}
        plans = {level: by_level[level]["plan"] for level in settings.levels if level in by_level}
        save_plans(path, plans, curve.metric, {level: by_level[level]["metric"] for level in plans})
        self.seconds["plans"] = round(time.monotonic() - began, 1)
        return plans

    def checkpoint(self, level: float, distilled: bool) -> Path:
        """Returns the checkpoint of ``level`` (the unpruned model for 0), pruned and distilled once."""
        from exporter.pruning.plan import HeadPlan
        from exporter.pruning.prune import prune_checkpoint

        settings = self.settings
        if not level:
            return settings.model
        pruned = settings.out / "checkpoints" / f"p{round(100 * level)}"
        if not (pruned / "config.json").exists():
            prune_checkpoint(settings.model, pruned, plan=HeadPlan.from_dict(self.plans()[level]), overwrite=True)
        if not distilled:
            return pruned
        recovered = pruned.with_name(f"{pruned.name}_distilled")
        if not (recovered / "recovery.json").exists():
            from exporter.evaluation.distill import distill

            train = self.examples(settings.train, DISTILL_EXAMPLES)
            distill(
                pruned,
                settings.model,
                train,
                recovered,
                epochs=settings.distill_epochs,
                seed=settings.seed,
                overwrite=True,
                progress=self.phases(
                    f"distilling the {round(100 * level)} % pruned model", settings.distill_epochs * len(train)
                ),
            )
        return recovered

    def make(self, candidate: Candidate) -> None:
        """Exports ``candidate`` into the work repository unless it is there already."""
        if served_models(self.repo, [candidate.name]):
            return
        export_deployment(
            self.checkpoint(candidate.level, candidate.distill),
            self.repo,
            candidate.name,
            candidate.precision,
            self.task,
            self.settings.batch_size,
            self.validation_texts,
            self.settings.min_int8_agreement,
        )

    @cached_property
    def validation_texts(self) -> list[str] | None:
        """The training texts an INT8 export is checked on: a classifier's classes, a language model's
        perplexity and continuations, a translation model's translations (of fewer sources: each is searched twice);
        None where INT8 does not apply. Read once: every INT8 candidate and the install use them."""
        if not applies(INT8, self.task):
            return None
        column = TASKS[self.task].input
        count = VALIDATION_SOURCES if self.task == "translation" else VALIDATION_TEXTS
        return [str(e[column]) for e in self.examples(self.settings.train, count)]


# Training texts on which an INT8 candidate must keep the FP32 outputs (the choice itself is made on dev).
VALIDATION_TEXTS = 512
VALIDATION_SOURCES = 128
# Training examples a candidate is distilled on (a seeded subset of larger files): a few minutes on 2 cores.
DISTILL_EXAMPLES = 6000


def export_deployment(
    checkpoint: Path,
    repo: Path,
    name: str,
    precision: str,
    task: str,
    batch_size: int,
    validation_texts: list[str] | None = None,
    min_agreement: float = MIN_AGREEMENT,
) -> str:
    """Exports ``checkpoint`` as deployment ``name`` of ``repo`` (a translation model as ``<name>_translate``), with a
    max batch size fitting ``batch_size`` (at least the exports' default), an INT8 export checked on
    ``validation_texts`` (a classifier required to keep the FP32 class on ``min_agreement`` of them); returns the
    model name written."""
    options = DeploymentOptions(max_batch_size=max(batch_size, DeploymentOptions().max_batch_size))
    if task == "translation":
        from exporter.triton.translation import export_translation_to_repository

        return export_translation_to_repository(
            checkpoint, repo, name, options=options, precision=precision, int8_sources=validation_texts
        ).name
    from exporter.triton.repository import export_to_repository

    return export_to_repository(
        checkpoint,
        repo,
        name,
        options=options,
        precision=precision,
        validation_texts=validation_texts,
        min_agreement=min_agreement,
    ).name
