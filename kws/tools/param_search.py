"""How kws.models' layouts were found: search the choices the seed leaves open for each model
and print those whose parameter count equals the seed's table exactly.

Run: .venv/bin/python kws/tools/param_search.py   (pure arithmetic; a few seconds)

Open choices: conv bias or not; batch norm counted as 0, 2 (PyTorch / Keras trainable) or 4
(Keras total, with moving mean and variance) per channel; the time steps L left at the
flatten; the fully connected head (straight to 16, or one or two hidden layers). The conv
widths follow the seed's notation (see docs/kws.md). A second pass lists pooling schedules
that leave the L a match needs.
"""

from __future__ import annotations

import itertools
import math

TARGETS = {
    "base": 1_855_056,
    "ch32": 94_768,
    "ch64": 363_600,
    "vgg": 470_736,
    "ch128": 2_071_184,
}
ROUND = sorted({2**k for k in range(4, 13)} | {100 * k for k in range(1, 31)})


def family(c: int, depth: int) -> list[int]:
    return [c * (1 if i < 4 else 2 if i < 8 else 4) for i in range(depth)]


WIDTHS = {
    "base": ([8 * 2**i for i in range(5)], 25),
    "ch32": (family(32, 8), 5),
    "ch64": (family(64, 8), 5),
    "ch128": (family(128, 9), 5),
}


def conv_params(widths: list[int], kernel: int, bias: bool, bn: int) -> int:
    total, cin = 0, 1
    for w in widths:
        total += cin * w * kernel + (w if bias else 0) + bn * w
        cin = w
    return total


def head_matches(rest: int, channels: int, max_len: int = 64):
    """(L, hidden widths) with flatten(channels x L) → hidden… → 16 costing ``rest``."""
    for length in range(1, max_len + 1):
        fan_in = channels * length
        if fan_in * 16 + 16 == rest:
            yield length, ()
        # one hidden layer of any width h: fan_in*h + h + 16h + 16
        if (rest - 16) % (fan_in + 17) == 0 and rest > 16:
            yield length, ((rest - 16) // (fan_in + 17),)
        for h1, h2 in itertools.product(ROUND, ROUND):
            if fan_in * h1 + h1 + h1 * h2 + h2 + h2 * 16 + 16 == rest:
                yield length, (h1, h2)


def search(name: str, widths: list[int], kernel: int) -> None:
    for bias, bn in itertools.product((True, False), (0, 2, 4)):
        rest = TARGETS[name] - conv_params(widths, kernel, bias, bn)
        if rest <= 0:
            continue
        for length, hidden in head_matches(rest, widths[-1]):
            print(f"{name:6} bias={bias!s:5} bn/ch={bn} L={length:<3} hidden={hidden}")


def vgg_search() -> None:
    # 8 blocks of two Conv(3), widths non-decreasing powers of two ending at 128, flatten → 16.
    for blocks in itertools.combinations_with_replacement((16, 32, 64, 128), 8):
        if blocks[-1] != 128:
            continue
        widths = [w for w in blocks for _ in range(2)]
        for bias, bn in itertools.product((True, False), (0, 2, 4)):
            rest = TARGETS["vgg"] - conv_params(widths, 3, bias, bn) - 16
            if rest > 0 and rest % (128 * 16) == 0:
                print(f"vgg    blocks={blocks} bias={bias} bn/ch={bn} L={rest // 2048}")


def pooled_length(pools, kernel: int, same: bool, ceil: bool, n: int = 16000) -> int:
    for p in pools:
        n = n if same else n - kernel + 1
        if p > 1:
            n = math.ceil(n / p) if ceil else n // p
    return n


def schedules() -> None:
    print("\nbase: 5 x [Conv(25), Pool(4)] →", end=" ")
    for same, ceil in itertools.product((True, False), repeat=2):
        print(f"same={same}/ceil={ceil}: L={pooled_length([4] * 5, 25, same, ceil)}", end="; ")
    print("\nch family: Conv(5, same), Pool(3, floor) after all convs but the last →")
    for depth in range(1, 10):
        print(f"  depth {depth}: L={pooled_length([3] * (depth - 1) + [1], 5, True, False)}")
    print("vgg: 8 pools, uniform sizes, same padding →", end=" ")
    for p in (2, 3, 4):
        print(f"pool {p}: L={pooled_length([p] * 8, 3, True, False)}", end="; ")
    sched = (4, 4, 4, 2, 2, 2, 2, 2)
    print(f"\n     pools {sched}: L={pooled_length(sched, 3, True, False)}")


if __name__ == "__main__":
    for name, (widths, kernel) in WIDTHS.items():
        search(name, widths, kernel)
    vgg_search()
    schedules()
