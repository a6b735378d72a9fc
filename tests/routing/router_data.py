"""Small labelled prompt sets for the semantic router's tests, written where a test wants them.

Three kinds of prompt, each with its own words: hard ones the weak model fails
and the strong one answers, easy ones both answer, and riddles both fail.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np

HARD_WORDS = ["eigenvalue", "integral", "theorem", "polynomial", "manifold", "homomorphism", "lemma", "derivative"]
EASY_WORDS = ["capital", "colour", "animal", "city", "river", "fruit", "holiday", "planet"]
RIDDLE_WORDS = ["riddle", "paradox", "trick", "enigma", "puzzle", "conundrum", "mystery", "cipher"]
FILLER = ["the", "which", "of", "following", "is", "a", "what", "best", "describes", "answer"]

WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"


def prompt_of(kind: str, rng: random.Random) -> str:
    words = {"hard": HARD_WORDS, "easy": EASY_WORDS, "riddle": RIDDLE_WORDS}[kind]
    chosen = [rng.choice(words) for _ in range(3)] + [rng.choice(FILLER) for _ in range(4)]
    rng.shuffle(chosen)
    return " ".join(chosen) + f" #{rng.randrange(10**6)}?\nA. yes\nB. no\nAnswer:"


def labelled_rows(n_per_kind: int = 40, *, seed: int = 0) -> list[tuple[str, bool, bool]]:
    """(prompt, weak right, strong right); one label in ten is flipped, so no router is perfect."""
    rng = random.Random(seed)
    truth = {"hard": (False, True), "easy": (True, True), "riddle": (False, False)}
    rows = []
    for kind, (weak, strong) in truth.items():
        for _ in range(n_per_kind):
            noisy_weak = (not weak) if rng.random() < 0.1 else weak
            rows.append((prompt_of(kind, rng), noisy_weak, strong))
    rng.shuffle(rows)
    return rows


def as_arrays(rows: list[tuple[str, bool, bool]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    return [r[0] for r in rows], np.array([r[1] for r in rows]), np.array([r[2] for r in rows])


def write_csv(
    path: Path,
    rows: list[tuple[str, bool, bool]],
    *,
    columns: tuple[str, str, str] = ("prompt", WEAK, STRONG),
    extra: bool = True,
    truth: tuple[str, str] = ("True", "False"),
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*columns, "subject"] if extra else columns)
        for prompt, weak, strong in rows:
            cells = [prompt, truth[0] if weak else truth[1], truth[0] if strong else truth[1]]
            writer.writerow([*cells, "synthetic"] if extra else cells)
    return path


def write_contamination(folder: Path, prompts: list[str]) -> Path:
    path = folder / "contaminated_prompts.jsonl"
    path.write_text("".join(json.dumps({"train_prompt": p, "eval_prompt": p}) + "\n" for p in prompts))
    return path
