"""``alpaca-demo``: an offline instruction dataset a tiny model learns in minutes on a CPU.

Every row is written here from small fact tables (no downloaded text). A *task* is a relation
(capital of a country, colour of a thing, opposite of a word, number words <-> digits, parity, ...)
asked through several instruction phrasings. For each fact one phrasing is held out: the ``test``
split asks the fact with that phrasing, the ``train`` split with all the others. So no test prompt
appears in training, yet each is answerable from training: the fact was seen under other wordings
and the held-out wording was seen with other facts. Answers are a word or two, instructions are
entities after a space, so every answer is a mapping between whole-word tokens of
:func:`xt.tokenizers.tiny_tokenizer`.

Rows are Alpaca rows (``instruction``, ``input`` = "", ``output``) plus ``task``; which phrasing is
held out, and the row order, follow the seed given to :func:`generate_rows`. Tasks with few facts (days, months) repeat their training
rows so that every task gets a similar share of the training steps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

SPLITS = ("train", "test")
DEFAULT_SEED = 42
#: Small tasks (days, months, ...) repeat their training rows up to about this many rows.
MIN_TRAIN_ROWS_PER_TASK = 120


@dataclass(frozen=True)
class Task:
    """A relation: phrasings with an ``{x}`` slot (after a space) and (x, answer) facts."""

    name: str
    phrasings: tuple[str, ...]
    facts: tuple[tuple[str, str], ...]


_CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Canada", "Ottawa"),
    ("Peru", "Lima"), ("Cuba", "Havana"), ("Kenya", "Nairobi"), ("Ghana", "Accra"), ("Greece", "Athens"),
    ("Turkey", "Ankara"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Ireland", "Dublin"),
    ("Thailand", "Bangkok"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"), ("Chile", "Santiago"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
    ("Ukraine", "Kyiv"),
)
_COLOURS = (
    ("banana", "yellow"), ("lemon", "yellow"), ("canary", "yellow"), ("grass", "green"), ("lime", "green"),
    ("cucumber", "green"), ("broccoli", "green"), ("emerald", "green"), ("sky", "blue"), ("ocean", "blue"),
    ("sapphire", "blue"), ("snow", "white"), ("milk", "white"), ("swan", "white"), ("ivory", "white"),
    ("coal", "black"), ("crow", "black"), ("charcoal", "black"), ("cherry", "red"), ("tomato", "red"),
    ("strawberry", "red"), ("ruby", "red"), ("carrot", "orange"), ("pumpkin", "orange"), ("chocolate", "brown"),
    ("flamingo", "pink"), ("plum", "purple"), ("lavender", "purple"), ("eggplant", "purple"), ("ash", "gray"),
)
_OPPOSITE_PAIRS = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"), ("up", "down"),
    ("open", "closed"), ("rich", "poor"), ("strong", "weak"), ("clean", "dirty"), ("full", "empty"),
    ("wet", "dry"), ("thick", "thin"), ("wide", "narrow"), ("deep", "shallow"), ("loud", "quiet"),
    ("sweet", "sour"), ("safe", "dangerous"), ("cheap", "expensive"), ("near", "far"), ("early", "late"),
    ("young", "old"), ("tall", "short"), ("hard", "soft"), ("good", "bad"), ("always", "never"),
    ("asleep", "awake"), ("alive", "dead"), ("true", "false"), ("left", "right"), ("top", "bottom"),
    ("inside", "outside"), ("smooth", "rough"), ("tight", "loose"), ("buy", "sell"), ("push", "pull"),
)
_PLURALS = (
    ("cat", "cats"), ("dog", "dogs"), ("cow", "cows"), ("horse", "horses"), ("bird", "birds"), ("tree", "trees"),
    ("flower", "flowers"), ("apple", "apples"), ("car", "cars"), ("book", "books"), ("egg", "eggs"),
    ("star", "stars"), ("word", "words"), ("hand", "hands"), ("eye", "eyes"), ("animal", "animals"),
    ("plant", "plants"), ("game", "games"), ("mouse", "mice"), ("goose", "geese"), ("child", "children"),
    ("man", "men"), ("woman", "women"), ("tooth", "teeth"), ("foot", "feet"), ("knife", "knives"),
    ("leaf", "leaves"), ("wife", "wives"), ("ox", "oxen"), ("sheep", "sheep"), ("fish", "fish"),
    ("person", "people"), ("city", "cities"), ("country", "countries"),
)
_BABIES = (
    ("dog", "puppy"), ("cat", "kitten"), ("cow", "calf"), ("horse", "foal"), ("pig", "piglet"), ("sheep", "lamb"),
    ("bear", "cub"), ("lion", "cub"), ("tiger", "cub"), ("fox", "cub"), ("duck", "duckling"), ("chicken", "chick"),
    ("goat", "kid"), ("frog", "tadpole"),
)
_SOUNDS = (
    ("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("pig", "oink"), ("sheep", "baa"), ("horse", "neigh"),
    ("duck", "quack"), ("lion", "roar"), ("snake", "hiss"), ("bee", "buzz"), ("owl", "hoot"), ("bird", "tweet"),
    ("frog", "croak"), ("chicken", "cluck"), ("goat", "bleat"), ("mouse", "squeak"), ("wolf", "howl"),
    ("bear", "growl"),
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
_UNITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_CATEGORIES = {
    "animal": ("dog", "cat", "cow", "horse", "pig", "sheep", "goat", "duck", "chicken", "mouse", "lion", "tiger",
               "bear", "wolf", "fox", "frog", "snake", "owl", "bee", "monkey", "elephant", "rabbit"),
    "fruit": ("apple", "banana", "cherry", "grape", "lemon", "strawberry", "plum"),
    "vegetable": ("carrot", "potato", "onion", "cucumber", "lettuce", "broccoli", "spinach", "pea"),
    "color": ("red", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray"),
    "country": tuple(c for c, _ in _CAPITALS),
    "city": tuple(c for _, c in _CAPITALS),
    "day": DAYS,
    "month": MONTHS,
}


def number_words(n: int) -> str:
    """0..99 in English words (``42`` -> ``forty-two``)."""
    if not 0 <= n < 100:
        raise ValueError(f"number_words handles 0..99, got {n}")
    if n < 20:
        return _UNITS[n]
    tens, unit = divmod(n, 10)
    return _TENS[tens] + ("-" + _UNITS[unit] if unit else "")


def _cyclic(items: tuple[str, ...], step: int) -> tuple[tuple[str, str], ...]:
    return tuple((items[i], items[(i + step) % len(items)]) for i in range(len(items)))


def tasks() -> list[Task]:
    """Every task of the demo, in a fixed order."""
    numbers = range(100)
    return [
        Task("capital", ("What is the capital of {x}?", "Name the capital city of {x}.",
                         "Which city is the capital of {x}?", "Tell me the capital of {x}."), _CAPITALS),
        Task("color", ("What color is the {x}?", "Name the color of the {x}.", "Which color does the {x} have?",
                       "Tell me the color of the {x}."), _COLOURS),
        Task("opposite", ("What is the opposite of {x}?", "Give the opposite of the word {x}.",
                          "Which word means the opposite of {x}?", "Name an antonym of {x}."),
             _OPPOSITE_PAIRS + tuple((b, a) for a, b in _OPPOSITE_PAIRS)),
        Task("plural", ("What is the plural of {x}?", "Give the plural form of the word {x}.",
                        "Write the plural of {x}.", "Tell me the plural of {x}."), _PLURALS),
        Task("baby", ("What is a baby {x} called?", "What do you call a young {x}?", "Name the baby of a {x}.",
                      "Tell me the word for a young {x}."), _BABIES),
        Task("sound", ("What sound does a {x} make?", "Which sound does the {x} make?",
                       "What noise does a {x} make?", "Name the sound of a {x}."), _SOUNDS),
        Task("next-day", ("What day comes after {x}?", "Which day follows {x}?", "Name the day after {x}.",
                          "If today is {x}, what day is tomorrow?"), _cyclic(DAYS, 1)),
        Task("previous-day", ("What day comes before {x}?", "Which day is before {x}?", "Name the day before {x}.",
                              "If today is {x}, what day was yesterday?"), _cyclic(DAYS, -1)),
        Task("next-month", ("What month comes after {x}?", "Which month follows {x}?", "Name the month after {x}.",
                            "Tell me the month after {x}."), _cyclic(MONTHS, 1)),
        Task("previous-month", ("What month comes before {x}?", "Which month is before {x}?",
                                "Name the month before {x}.", "Tell me the month before {x}."), _cyclic(MONTHS, -1)),
        Task("to-digits", ("Write {x} as a number.", "Write {x} in digits.", "What number is {x}?",
                           "Convert {x} to digits."), tuple((number_words(n), str(n)) for n in numbers)),
        Task("to-words", ("Write {x} in words.", "Spell out the number {x}.", "How do you say {x} in words?",
                          "Write the number {x} as words."), tuple((str(n), number_words(n)) for n in numbers)),
        Task("parity", ("Is {x} even or odd?", "Is the number {x} odd or even?", "Tell me if {x} is even or odd.",
                        "Say whether {x} is odd or even."),
             tuple((str(n), "even" if n % 2 == 0 else "odd") for n in numbers)),
        Task("category", ("What kind of thing is {x}?", "Which category does the word {x} belong to?",
                          "Classify the word {x}.", "Tell me what type of thing {x} is."),
             tuple((x, cat) for cat, xs in _CATEGORIES.items() for x in xs)),
    ]


def _split_rows(seed: int) -> dict[str, list[dict[str, Any]]]:
    """Both splits at once: for each fact one phrasing (balanced per task) goes to ``test``."""
    rng = random.Random(seed)
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for task in tasks():
        facts = list(task.facts)
        rng.shuffle(facts)
        offset = rng.randrange(len(task.phrasings))
        train: list[dict[str, Any]] = []
        for i, (x, answer) in enumerate(facts):
            held_out = (i + offset) % len(task.phrasings)
            for p, phrasing in enumerate(task.phrasings):
                row = {"instruction": phrasing.format(x=x), "input": "", "output": answer, "task": task.name}
                (rows["test"] if p == held_out else train).append(row)
        repeats = max(1, round(MIN_TRAIN_ROWS_PER_TASK / len(train)))
        rows["train"] += train * repeats
    train_prompts = {r["instruction"] for r in rows["train"]}
    rows["test"] = [r for r in rows["test"] if r["instruction"] not in train_prompts]
    for split in SPLITS:
        random.Random(f"{seed}-{split}").shuffle(rows[split])
    return rows


def generate_rows(split: str = "train", seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """The rows of ``split`` ("train" or "test") for ``seed``; the same seed gives the same rows."""
    if split not in SPLITS:
        raise ValueError(f"alpaca-demo has splits {', '.join(SPLITS)}, not {split!r}")
    return _split_rows(int(seed))[split]


#: A few rows in the dataset's own format, for the conformance kit and docs.
SAMPLE_ROWS = (
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris", "task": "capital"},
    {"instruction": "Write 42 in words.", "input": "", "output": "forty-two", "task": "to-words"},
    {"instruction": "Is 7 even or odd?", "input": "", "output": "odd", "task": "parity"},
)


def _normalise(text: str) -> str:
    return " ".join(str(text).split()).rstrip(".").strip()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the reply equals the reference (ignoring surrounding whitespace and a final period)."""
    return 1.0 if _normalise(prediction) == _normalise(reference) else 0.0


def heldout_prompt(seed: int = DEFAULT_SEED, index: int = 0) -> str:
    """One instruction of the ``test`` split (never seen in training with ``seed``)."""
    rows = generate_rows("test", seed)
    return rows[index % len(rows)]["instruction"]
