"""Three small generated sentence-classification tasks for the branch-train-merge demo.

The demo needs tasks on which a short fine-tune of the encoder clearly beats the base
encoder, so that a merge has a gain to keep. Topic, plain sentiment or question-vs-statement
would not do: all-MiniLM's pooled embeddings already separate those with a linear probe
(we measured 0.93-1.0). Each task here puts the answer in *composition* rather than in
which words occur, so both classes share one vocabulary and a linear probe on frozen
mean-pooled features stays well below a fine-tune:

- ``sentiment``: the verdict of a mixed review, carried by the main clause and not by the
  conceded one ("although the soup was awful the service was superb": positive);
- ``agent``: whether a person or an animal performed the action, in active or passive
  voice ("the dog was chased by the farmer": a person);
- ``order``: which of two events came first, told with "before", "after" or "and then"
  in either clause order ("after we went swimming we ate dinner": the outing). The
  "and then" frames, where telling order is time order, give training a foothold: with
  only before/after (an XOR of connective and clause order) some seeds never left chance
  in 60 steps.

The three rely on different cues (discourse connectives, voice, temporal connectives and
clause order), so their task vectors interfere little. Everything is generated from
templates and word lists with a seeded ``random.Random``: no downloads, the same sentences
on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

TRAIN_PER_LABEL = 200
TEST_PER_LABEL = 100


@dataclass(frozen=True)
class Example:
    """One sentence and the index of its label in ``Task.labels``."""

    text: str
    label: int


@dataclass(frozen=True)
class Task:
    """A named classification task with disjoint, label-balanced train and test splits."""

    name: str
    description: str
    labels: tuple[str, ...]
    train: tuple[Example, ...]
    test: tuple[Example, ...]


# A generator draws one sentence of the given label from the rng.
Generator = Callable[[random.Random, int], str]

_NOUNS = (
    "film", "soup", "hotel", "concert", "book", "service", "game", "coffee", "show",
    "trip", "lecture", "phone", "meal", "room", "album", "play", "museum", "bakery",
    "course", "podcast", "ferry", "garden", "camera", "sofa",
)  # fmt: skip
_POSITIVE = (
    "good", "great", "wonderful", "excellent", "delightful", "pleasant", "superb",
    "charming", "lovely", "brilliant", "enjoyable", "impressive",
)  # fmt: skip
_NEGATIVE = (
    "bad", "awful", "terrible", "boring", "dreadful", "disappointing", "poor",
    "horrible", "dull", "mediocre", "unpleasant", "tedious",
)  # fmt: skip
# {sub} is the conceded clause, {main} the one that carries the verdict.
_CONTRAST_FRAMES = (
    "{sub} but {main}",
    "although {sub} {main}",
    "{main} even though {sub}",
    "{sub} yet overall {main}",
)


def _opinion(rng: random.Random, noun: str, positive: bool) -> str:
    """A clause praising or criticising ``noun``."""
    return f"the {noun} was {rng.choice(_POSITIVE if positive else _NEGATIVE)}"


def _sentiment(rng: random.Random, label: int) -> str:
    """A mixed review; label 1 (positive) when the main clause, not the concession, is."""
    conceded, main = rng.sample(_NOUNS, 2)
    return rng.choice(_CONTRAST_FRAMES).format(
        sub=_opinion(rng, conceded, label != 1), main=_opinion(rng, main, label == 1)
    )


_PEOPLE = (
    "farmer", "teacher", "doctor", "child", "baker", "soldier", "nurse", "pilot",
    "chef", "king", "student", "painter", "driver", "sailor", "miner", "judge",
)  # fmt: skip
_ANIMALS = (
    "dog", "cat", "horse", "fox", "goat", "bear", "wolf", "lion", "owl", "mouse",
    "rabbit", "deer", "tiger", "monkey", "duck", "sheep",
)  # fmt: skip
_VERBS = (
    "chased", "followed", "watched", "pushed", "scared", "found", "helped",
    "noticed", "startled", "ignored", "greeted", "visited", "attacked", "woke",
)  # fmt: skip
_PLACES = (
    "in the garden", "near the river", "at dawn", "behind the barn", "in the forest",
    "on the hill", "after lunch", "by the old bridge", "in the snow", "at the market",
    "", "", "",
)  # fmt: skip
_AGENT_FRAMES = (
    "the {doer} {verb} the {done_to} {place}",
    "the {done_to} was {verb} by the {doer} {place}",
)


def _agent(rng: random.Random, label: int) -> str:
    """Label 1 (animal) when an animal performs the action, in either voice."""
    person, animal = rng.choice(_PEOPLE), rng.choice(_ANIMALS)
    doer, done_to = (animal, person) if label == 1 else (person, animal)
    text = rng.choice(_AGENT_FRAMES).format(
        doer=doer, done_to=done_to, verb=rng.choice(_VERBS), place=rng.choice(_PLACES)
    )
    return text.strip()


# (first mention, later mention) of whoever did both things.
_WHO = (
    ("we", "we"), ("they", "they"), ("i", "i"), ("my parents", "they"), ("the kids", "they"),
    ("she", "she"), ("my brother", "he"), ("our aunt", "she"),
)  # fmt: skip
_MEALS = (
    "ate dinner",
    "had lunch",
    "cooked breakfast",
    "baked a cake",
    "made soup",
    "ordered pizza",
)
_OUTINGS = (
    "went for a walk", "went swimming", "played tennis", "rode bikes", "went jogging",
    "climbed the hill",
)  # fmt: skip
_ORDER_FRAMES = (
    "{who} {first} before {pro} {second}",
    "{who} {second} after {pro} {first}",
    "before {who} {second} {pro} {first}",
    "after {who} {first} {pro} {second}",
    "{who} {first} and then {pro} {second}",
    "first {who} {first} and later {pro} {second}",
)


def _order(rng: random.Random, label: int) -> str:
    """Label 1 (meal first) when the meal happened before the outing, however it is told."""
    meal, outing = rng.choice(_MEALS), rng.choice(_OUTINGS)
    first, second = (meal, outing) if label == 1 else (outing, meal)
    who, pro = rng.choice(_WHO)
    return rng.choice(_ORDER_FRAMES).format(who=who, pro=pro, first=first, second=second)


_COMPARATIVES = (("taller", "shorter"), ("older", "younger"), ("faster", "slower"),
                 ("heavier", "lighter"), ("stronger", "weaker"))  # fmt: skip


def _comparison(rng: random.Random, label: int) -> str:
    """Label 1 (animal) when the animal is the taller/older/... one, however it is said."""
    person, animal = rng.choice(_PEOPLE), rng.choice(_ANIMALS)
    more, less = rng.choice(_COMPARATIVES)
    winner, loser = (animal, person) if label == 1 else (person, animal)
    if rng.random() < 0.5:
        return f"the {winner} is {more} than the {loser}"
    return f"the {loser} is {less} than the {winner}"


_SPECS: dict[str, tuple[str, tuple[str, ...], Generator]] = {
    "sentiment": ("verdict of a mixed review", ("negative", "positive"), _sentiment),
    "agent": ("who performed the action, in either voice", ("person", "animal"), _agent),
    "order": ("which of two events came first", ("outing first", "meal first"), _order),
    # Not one of the demo's branches; MergeLock's protection benchmark uses it as a fourth.
    # An XOR of comparative and word order with no foothold: it needs 240 steps, not 60.
    "comparison": ("who is the more of a comparison", ("person", "animal"), _comparison),
}
TASK_NAMES: tuple[str, ...] = ("sentiment", "agent", "order")
EXTRA_TASK_NAMES: tuple[str, ...] = ("comparison",)


def make_task(
    name: str,
    seed: int = 0,
    train_per_label: int = TRAIN_PER_LABEL,
    test_per_label: int = TEST_PER_LABEL,
) -> Task:
    """Generate task ``name``: distinct sentences, each split balanced and shuffled.

    Train and test never share a sentence, so test accuracy measures generalisation to new
    combinations of the same vocabulary rather than memorisation.
    """
    if name not in _SPECS:
        known = ", ".join(TASK_NAMES + EXTRA_TASK_NAMES)
        raise ValueError(f"unknown demo task {name!r}; known: {known}")
    description, labels, generate = _SPECS[name]
    # The seed is mixed with the name so that tasks differ even under the same seed.
    rng = random.Random(f"{name}:{seed}")
    need = train_per_label + test_per_label
    seen: set[str] = set()
    per_label: list[list[str]] = []
    for label in range(len(labels)):
        texts: list[str] = []
        for _ in range(need * 200):
            text = generate(rng, label)
            if text not in seen:
                seen.add(text)
                texts.append(text)
                if len(texts) == need:
                    break
        else:
            raise ValueError(f"task {name!r} cannot produce {need} distinct sentences per label")
        per_label.append(texts)
    train = [
        Example(t, lab) for lab, texts in enumerate(per_label) for t in texts[:train_per_label]
    ]
    test = [Example(t, lab) for lab, texts in enumerate(per_label) for t in texts[train_per_label:]]
    rng.shuffle(train)
    rng.shuffle(test)
    return Task(name, description, labels, tuple(train), tuple(test))


def all_tasks(seed: int = 0) -> list[Task]:
    """The demo's three tasks, in a fixed order."""
    return [make_task(name, seed) for name in TASK_NAMES]
