"""The seed report's own results tables, as it prints them, and the cells they map to.

A *cell* is one trained configuration: (model, depth, seed-style dropout "DO(p)" or None, BN).
The seed writes dropout as "DO(p)" without saying whether p is kept or dropped; a cell keeps
the seed's p, and ``ModelSpec`` is built for a stated meaning (kws.models.drop_rate).

The main table ("Previous Work" / "Added Work" slides): columns "1D DO(0.5)", "1D BN",
"1D DO+BN". A row named "… DO(p)" ran its DO columns with p instead of 0.5 — the "new
challenger" rows prove it: "Custom channel 32 DO(0.75)" reads 0.9533 | X | 0.9458, the depth
table's 8-layer DO(0.75) and DO(0.75)+BN figures. ``None`` is the seed's "X" (not run).
"""

from __future__ import annotations

from dataclasses import dataclass

from kws.models import ModelSpec, drop_rate


@dataclass(frozen=True)
class Cell:
    model: str
    depth: int | None  # None: the model's own depth
    do: float | None  # the seed's DO(p); None: no dropout
    bn: bool

    def spec(self, meaning: str, init: str = "keras") -> ModelSpec:
        rate = 0.0 if self.do is None else drop_rate(self.do, meaning)
        return ModelSpec(self.model, self.depth, rate, self.bn, init)

    def column(self) -> str:
        """The seed's column name: "DO(0.25)", "DO(0.25)+BN", "BN"."""
        if self.do is None:
            return "BN" if self.bn else "none"
        return f"DO({self.do:g})" + ("+BN" if self.bn else "")


@dataclass(frozen=True)
class MainRow:
    name: str  # the seed's row name
    model: str
    notation: str
    do: float  # p of the row's DO columns
    seed: tuple[float | None, float | None, float | None]  # DO, BN, DO+BN; None = "X"
    params: int

    def cells(self) -> tuple[Cell, Cell, Cell]:
        return (
            Cell(self.model, None, self.do, False),
            Cell(self.model, None, None, True),
            Cell(self.model, None, self.do, True),
        )


MAIN_COLUMNS = ("1D DO", "1D BN", "1D DO+BN")
MAIN_ROWS = (
    MainRow(
        "base model",
        "base",
        "5 Conv(25, 8·2^i), 5 Pool(4), 2 FC",
        0.5,
        (0.9090, 0.9072, 0.9240),
        1_855_056,
    ),
    MainRow("Custom channel 32", "ch32", "8 CONV(5, 64)", 0.5, (0.9477, 0.9285, 0.9391), 94_768),
    MainRow(
        "Custom channel 64 DO(0.75)",
        "ch64",
        "8 CONV(5, 128)",
        0.75,
        (0.9589, None, 0.9497),
        363_600,
    ),
    MainRow(
        "Custom VGG style DO(0.75)",
        "vgg",
        "16 CONV(3, 128), 8 Pool",
        0.75,
        (0.9620, 0.9423, 0.9136),
        470_736,
    ),
    MainRow(
        "Custom channel 128", "ch128", "9 CONV(5, 512)", 0.5, (0.9396, 0.9632, 0.9674), 2_071_184
    ),
    MainRow(
        "Custom channel 32 DO(0.75)", "ch32", "8 CONV(5, 64)", 0.75, (0.9533, None, 0.9458), 94_768
    ),
    MainRow(
        "Custom channel 128 DO(0.25)+BN",
        "ch128",
        "9 CONV(5, 512)",
        0.25,
        (0.9535, None, 0.9701),
        2_071_184,
    ),
)

DEPTH_COLUMNS = ((0.25, False), (0.25, True), (0.75, False), (0.75, True))
# "Added Work": the ch32 and ch128 families at 1–9 conv layers; depths 1 and 2 are "X".
DEPTH_TABLES: dict[int, dict[int, tuple[float, float, float, float] | None]] = {
    32: {
        1: None,
        2: None,
        3: (0.5034, 0.5277, 0.6260, 0.6816),
        4: (0.6395, 0.6712, 0.7983, 0.8019),
        5: (0.7248, 0.7458, 0.8432, 0.8461),
        6: (0.8650, 0.8536, 0.9101, 0.8951),
        7: (0.9267, 0.9215, 0.9425, 0.9252),
        8: (0.9452, 0.9369, 0.9533, 0.9458),
        9: (0.9362, 0.9385, 0.9506, 0.9491),
    },
    128: {
        1: None,
        2: None,
        3: (0.5522, 0.5124, 0.6476, 0.6457),
        4: (0.6768, 0.6866, 0.7803, 0.7867),
        5: (0.7601, 0.7445, 0.8386, 0.8449),
        6: (0.8906, 0.8789, 0.9130, 0.8970),
        7: (0.9369, 0.9171, 0.9576, 0.9302),
        8: (0.9570, 0.9547, 0.9618, 0.9580),
        9: (0.9535, 0.9701, 0.9645, 0.9595),
    },
}
SEED_DEPTHS = (3, 4, 5, 6, 7, 8, 9)  # the depths the seed ran (1 and 2 are "X")


def depth_cells(channels: int, depths=SEED_DEPTHS) -> list[Cell]:
    return [Cell(f"ch{channels}", depth, do, bn) for depth in depths for do, bn in DEPTH_COLUMNS]


def main_cells(models: set[str] | None = None) -> list[Cell]:
    """Every distinct cell of the main table, in row order (BN-only cells once per model)."""
    out: list[Cell] = []
    for row in MAIN_ROWS:
        if models is not None and row.model not in models:
            continue
        for cell in row.cells():
            if cell not in out:
                out.append(cell)
    return out
