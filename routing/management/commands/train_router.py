import json
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts.models import Organization
from routing.evaluation import (
    DEFAULT_PROMPT_COLUMN,
    LabelledDataError,
    LabelledPrompts,
    RouterRow,
    contamination_files,
    cross_validate,
    labelled_csv_files,
    load_labelled_prompts,
)
from routing.semantic import Hyperparameters, feature_matrix, fit_semantic_router
from routing.semantic.training import ORGANIZATION_LABEL_WEIGHT, NotEnoughLabels, files_sha256
from routing.services import trained_router_create

from .evaluate_router import add_column_arguments


class Command(BaseCommand):
    help = (
        "Train the semantic router: from labelled CSVs into NAME.npz and NAME.json (--data, --output), or for "
        "an organization from its own ratings, stored as its active router (--organization, optionally "
        "mixed with --data)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data", help="A labelled CSV file or a folder of them.")
        add_column_arguments(parser)
        parser.add_argument("--output", help="Write PATH.npz and PATH.json (e.g. routing/router_models/NAME).")
        parser.add_argument("--description", default="", help="What the data is, for the model's record.")
        parser.add_argument("--model-version", help="The model's version. Default: the output's name.")
        parser.add_argument(
            "--folds", type=int, default=5, help="Cross-validate with this many folds for the recorded metrics."
        )
        parser.add_argument("--seed", type=int, default=0, help="Seed for the cross-validation folds.")
        parser.add_argument("--organization", help="Train this organization's router (its slug) from its ratings.")
        parser.add_argument(
            "--organization-weight",
            type=float,
            default=ORGANIZATION_LABEL_WEIGHT,
            help="With --data: how many base prompts one of the organization's labels weighs. Default: %(default)s.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if bool(options["organization"]) == bool(options["output"]):
            raise CommandError("Give either --organization SLUG or --output PATH (with --data).")
        if options["output"]:
            self.train_to_files(options)
        else:
            self.train_for_organization(options)

    def load(self, options: dict[str, Any]) -> LabelledPrompts:
        try:
            return load_labelled_prompts(
                options["data"],
                prompt_column=options["prompt_column"],
                weak_column=options["weak_column"],
                strong_column=options["strong_column"],
            )
        except LabelledDataError as exc:
            raise CommandError(str(exc)) from exc

    def describe(self, data: LabelledPrompts, options: dict[str, Any]) -> dict[str, Any]:
        path = Path(options["data"])
        contamination = contamination_files(path, data.files)
        return {
            "description": options["description"],
            "path": options["data"],
            "files": len(data.files),
            "sha256": files_sha256(labelled_csv_files(path)),
            "contamination_files": [str(p) for p in contamination],
            "contamination_sha256": files_sha256(contamination) if contamination else None,
            "contaminated_dropped": data.contaminated_dropped,
            "prompts": len(data),
            "weak_accuracy": round(float(data.weak_right.mean()), 6),
            "strong_accuracy": round(float(data.strong_right.mean()), 6),
        }

    def train_to_files(self, options: dict[str, Any]) -> None:
        if not options["data"]:
            raise CommandError("--output needs --data.")
        output = Path(options["output"])
        if output.suffix in {".npz", ".json"}:
            output = output.with_suffix("")
        if not output.parent.is_dir():
            raise CommandError(f"{output.parent} is not a folder.")
        data = self.load(options)
        version = options["model_version"] or output.name
        hyperparameters = Hyperparameters()
        metrics: dict[str, Any] = {}
        if options["folds"] >= 2:
            row = RouterRow("semantic", lambda prompts, labels: _fit(prompts, labels, hyperparameters))
            try:
                evaluation = cross_validate(data, rows=[row], folds=options["folds"], seed=options["seed"])
            except ValueError as exc:
                raise CommandError(f"Cannot cross-validate {options['data']}: {exc}") from exc
            result = next(r for r in evaluation.results if r.name == "semantic")
            random = next(r for r in evaluation.results if r.name == "random")
            metrics = {
                "method": f"stratified {options['folds']}-fold cross-validation (seed {options['seed']}), "
                "RouteLLM's metrics; cost share with a weak call at "
                f"{evaluation.weak_cost_ratio} of a strong one",
                **result.metrics.as_dict(),
                "random": random.metrics.as_dict(),
            }
        model = fit_semantic_router(
            feature_matrix(data.prompts),
            data.weak_right.astype(float),
            data.strong_right.astype(float),
            version=version,
            hyperparameters=hyperparameters,
            metadata={
                "created": timezone.now().isoformat(timespec="seconds"),
                "training_data": self.describe(data, options),
                "command": _command_line(options),
            },
        )
        model = replace(model, metrics=metrics)
        payload = model.to_bytes()
        output.with_suffix(".npz").write_bytes(payload)
        summary = {
            "version": model.version,
            **model.metadata,
            "metrics": metrics,
            "vocabulary": len(model.vocabulary),
            "npz_bytes": len(payload),
        }
        output.with_suffix(".json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        apgr = metrics.get("apgr")
        self.stdout.write(
            f"{output}.npz: {len(data)} prompts, {len(model.vocabulary)} n-grams, {len(payload)} bytes"
            + (f", cross-validated APGR {apgr:.3f}" if apgr is not None else "")
        )

    def train_for_organization(self, options: dict[str, Any]) -> None:
        organization = Organization.objects.filter(slug=options["organization"]).first()
        if organization is None:
            raise CommandError(f"No organization with the slug {options['organization']!r}.")
        base = self.load(options) if options["data"] else None
        try:
            router = trained_router_create(
                organization=organization,
                base=base,
                base_description=self.describe(base, options) if base is not None else None,
                organization_weight=options["organization_weight"],
            )
        except NotEnoughLabels as exc:
            raise CommandError(f"Not training a router for {organization.slug}: {exc}") from exc
        counts = router.trained_on["organization_labels"]
        self.stdout.write(
            f"{organization.slug}: router {router.version} is active "
            f"(cheap model right {counts['cheap_model_right']}, wrong {counts['cheap_model_wrong']}; "
            f"premium right {counts['premium_model_right']}, wrong {counts['premium_model_wrong']}; "
            f"cross-validated AUC {router.metrics.get('cheap_model_failure_auc_cv')})"
        )


def _fit(prompts: Any, labels: Any, hyperparameters: Hyperparameters) -> Any:
    model = fit_semantic_router(
        feature_matrix(prompts),
        labels[:, 0].astype(float),
        labels[:, 1].astype(float),
        version="cv",
        hyperparameters=hyperparameters,
    )
    return model.score_many


def _command_line(options: dict[str, Any]) -> str:
    words = ["manage.py", "train_router", "--data", options["data"]]
    for name in ("prompt_column", "weak_column", "strong_column"):
        value = options[name]
        if value is not None and not (name == "prompt_column" and value == DEFAULT_PROMPT_COLUMN):
            words += [f"--{name.replace('_', '-')}", value]
    words += ["--output", options["output"]]
    if options["description"]:
        words += ["--description", options["description"]]
    if options["model_version"]:
        words += ["--model-version", options["model_version"]]
    if options["folds"] != 5 or options["seed"] != 0:
        words += ["--folds", str(options["folds"]), "--seed", str(options["seed"])]
    return shlex.join(words)
