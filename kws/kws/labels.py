"""The 16 keywords and their class order.

Class index ``i`` is ``CLASSES[i]`` everywhere (model outputs, checkpoints, confusion matrices).
The order is the one the seed's confusion matrices print: the digits, then the six other words
alphabetically. (The seed's data slide lists the words in another order — ``…, tree, cat,
house, dog`` — which is only how it named them.)
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "bed",
    "bird",
    "cat",
    "dog",
    "house",
    "tree",
)
NUM_CLASSES = len(CLASSES)
CLASS_INDEX: dict[str, int] = {word: i for i, word in enumerate(CLASSES)}

SAMPLE_RATE = 16000
CLIP_SAMPLES = SAMPLE_RATE  # one second


def display_name(word: str) -> str:
    """The label the seed's matrices show ("Zero", … "Tree"); the seed's "Fore" typo is fixed."""
    return word.capitalize()
