import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.evaluation import (
    DEFAULT_PROMPT_COLUMN,
    DEFAULT_WEAK_COST_RATIO,
    ROUTER_ROWS,
    LabelledDataError,
    cross_validate,
    format_table,
    load_labelled_prompts,
    train_and_evaluate,
)


def add_column_arguments(parser: CommandParser) -> None:
    parser.add_argument("--prompt-column", default=DEFAULT_PROMPT_COLUMN, help="Default: %(default)s.")
    parser.add_argument(
        "--weak-column", help="Whether the weak model was right. Default: weak_right or RouteLLM's Mixtral column."
    )
    parser.add_argument(
        "--strong-column", help="Whether the strong model was right. Default: strong_right or RouteLLM's GPT-4 column."
    )


class Command(BaseCommand):
    help = (
        "Score routers by RouteLLM's metrics (APGR, CPT(50%), CPT(80%), cost at 95% of the strong model's "
        "quality) on labelled CSVs: stratified k-fold cross-validation on --train, or train on --train and "
        "score --eval."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--train", required=True, help="A labelled CSV file or a folder of them.")
        parser.add_argument("--eval", dest="eval_path", help="Score this labelled data instead of cross-validating.")
        add_column_arguments(parser)
        parser.add_argument("--folds", type=int, default=5, help="Cross-validation folds. Default: %(default)s.")
        parser.add_argument("--seed", type=int, default=0, help="Seed for the folds and the random router.")
        parser.add_argument(
            "--weak-cost-ratio",
            type=float,
            default=DEFAULT_WEAK_COST_RATIO,
            help="A weak call's cost relative to a strong one. Default: %(default)s (Mixtral-8x7B vs GPT-4-1106).",
        )
        parser.add_argument("--router", action="append", dest="routers", help="Only these routers (repeatable).")
        parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["folds"] < 2:
            raise CommandError("--folds must be at least 2.")
        if not 0 <= options["weak_cost_ratio"] <= 1:
            raise CommandError("--weak-cost-ratio must be between 0 and 1.")
        rows = ROUTER_ROWS
        if options["routers"]:
            known = {row.name for row in ROUTER_ROWS}
            unknown = sorted(set(options["routers"]) - known)
            if unknown:
                raise CommandError(f"Unknown router {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
            rows = [row for row in ROUTER_ROWS if row.name in options["routers"]]
        columns = {
            "prompt_column": options["prompt_column"],
            "weak_column": options["weak_column"],
            "strong_column": options["strong_column"],
        }
        try:
            train = load_labelled_prompts(options["train"], **columns)
            test = load_labelled_prompts(options["eval_path"], **columns) if options["eval_path"] else None
        except LabelledDataError as exc:
            raise CommandError(str(exc)) from exc
        common = {"rows": rows, "seed": options["seed"], "weak_cost_ratio": options["weak_cost_ratio"]}
        if test is None:
            try:
                evaluation = cross_validate(train, folds=options["folds"], **common)
            except ValueError as exc:  # too few prompts of a kind for the folds asked for
                raise CommandError(f"Cannot cross-validate {options['train']}: {exc}") from exc
        else:
            evaluation = train_and_evaluate(train, test, **common)
        if options["json"]:
            self.stdout.write(json.dumps(evaluation.as_dict(), indent=2))
        else:
            self.stdout.write(format_table(evaluation))
