"""The seed's raw-waveform 1D-CNNs, with parameter counts equal to the seed's table.

Every model is the same shape of network: conv blocks (Conv1d → [BatchNorm] → ReLU → [MaxPool],
computed as [MaxPool] then ReLU, which gives the same numbers)
over the 16000-sample waveform, flatten, optional hidden fully connected layers, and a linear
layer to the 16 classes. Dropout, when asked for, sits before every fully connected layer.
``docs/kws.md`` explains how each configuration was recovered from the seed's counts.

Initial weights are Keras' / TensorFlow 1.x's defaults (Glorot-uniform weights, zero biases)
unless ``init="torch"``: with PyTorch's defaults the deep no-BN models start with almost
constant logits and do not learn (docs/kws.md, "Initialisation").
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from torch import Tensor, nn

from kws.labels import CLIP_SAMPLES, NUM_CLASSES

MAX_DEPTH = 9
INITS = ("keras", "torch")  # Glorot-uniform + zero bias (the seed's framework), or PyTorch's
DROPOUT_MEANINGS = ("keep", "rate")  # how a seed "DO(p)" reads: TF1 keep_prob, or a drop rate


def drop_rate(p: float, meaning: str) -> float:
    """The drop probability nn.Dropout takes for a seed-style "DO(p)".

    ``meaning`` "keep": p is TensorFlow 1.x's ``keep_prob`` (DO(0.75) drops 25 %);
    "rate": p is the drop rate itself (Keras ``Dropout(rate)``, PyTorch ``p``)."""
    if meaning not in DROPOUT_MEANINGS:
        raise ValueError(f"dropout meaning must be one of {DROPOUT_MEANINGS}, not {meaning!r}")
    if not 0.0 < p <= 1.0 if meaning == "keep" else not 0.0 <= p < 1.0:
        bounds = "(0, 1]" if meaning == "keep" else "[0, 1)"
        raise ValueError(
            f"a {'keep probability' if meaning == 'keep' else 'drop rate'} "
            f"must be in {bounds}, not {p}"
        )
    return round(1.0 - p, 10) if meaning == "keep" else p


@dataclass(frozen=True)
class Arch:
    """One network layout; ``pools[i]`` is the max-pool size after conv ``i`` (1: none)."""

    name: str
    notation: str  # as the seed's table writes it
    widths: tuple[int, ...]
    kernel: int
    pools: tuple[int, ...]
    padding: str  # "same" (length kept) or "valid" (no padding)
    ceil_pool: bool  # a partial last pooling window still yields an output
    hidden: tuple[int, ...] = ()  # hidden fully connected widths

    def conv_padding(self) -> int:
        return self.kernel // 2 if self.padding == "same" else 0

    def output_length(self, samples: int = CLIP_SAMPLES) -> int:
        """Time steps left after the conv blocks, i.e. what the flatten sees per channel."""
        length = samples
        for pool in self.pools:
            length = length + 2 * self.conv_padding() - self.kernel + 1
            if pool > 1:
                length = -(-length // pool) if self.ceil_pool else length // pool
            if length < 1:
                raise ValueError(f"{self.name}: a {samples}-sample input shrinks to nothing")
        return length


@dataclass(frozen=True)
class SeedCount:
    """A row of the seed's table: its parameter count, and whether that count has batch norm."""

    notation: str
    params: int
    with_bn: bool


# The seed's table ("Previous Work" / "Added Work" slides), by our model name.
SEED_COUNTS: dict[str, SeedCount] = {
    "base": SeedCount("5 Conv(25, 8·2^i), 5 Pool(4), 2 FC", 1_855_056, with_bn=False),
    "ch32": SeedCount("8 CONV(5, 64)", 94_768, with_bn=False),
    "ch64": SeedCount("8 CONV(5, 128)", 363_600, with_bn=False),
    "vgg": SeedCount("16 CONV(3, 128), 8 Pool", 470_736, with_bn=False),
    "ch128": SeedCount("9 CONV(5, 512)", 2_071_184, with_bn=True),
}
MODEL_NAMES = tuple(SEED_COUNTS)
# The seed's "Custom channel N" models have 8 conv layers, except channel 128, which has 9.
DEFAULT_DEPTH = {32: 8, 64: 8, 128: 9}


def base_arch() -> Arch:
    """The baseline: the 2D MNIST-tutorial CNN flattened to 1D (5x5 → 1x25, 2x2 → 1x4)."""
    return Arch(
        name="base",
        notation=SEED_COUNTS["base"].notation,
        widths=tuple(8 * 2**i for i in range(5)),
        kernel=25,
        pools=(4,) * 5,
        padding="valid",
        ceil_pool=True,  # TensorFlow's "SAME" pooling: 16000 → … → 8 steps
        hidden=(1024, 512),
    )


def family_widths(channels: int, depth: int) -> tuple[int, ...]:
    """The "Added Work" tables: layers 1–4 have ``channels``, 5–8 twice that, the 9th 4x."""
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be 1..{MAX_DEPTH}, not {depth}")
    return tuple(channels * (1 if i < 4 else 2 if i < 8 else 4) for i in range(depth))


def channel_arch(channels: int, depth: int | None = None) -> Arch:
    """The "Custom channel N" models: Conv(5) blocks, MaxPool(3) after every one but the last."""
    if channels < 1:
        raise ValueError("channels must be positive")
    depth = DEFAULT_DEPTH.get(channels, 8) if depth is None else depth
    widths = family_widths(channels, depth)
    return Arch(
        name=f"ch{channels}",
        notation=f"{depth} CONV(5, {widths[-1]})",
        widths=widths,
        kernel=5,
        pools=(3,) * (depth - 1) + (1,),
        padding="same",
        ceil_pool=False,
    )


def vgg_arch() -> Arch:
    """The "Custom VGG style": 8 blocks of two Conv(3), 64 then 128 channels, pool per block."""
    widths = (64,) * 8 + (128,) * 8
    # Pool 4 in the first three blocks, 2 after: 16000 → 4000 → 1000 → 250 → 125 → … → 7.
    block_pools = (4, 4, 4, 2, 2, 2, 2, 2)
    pools = tuple(p for block in block_pools for p in (1, block))
    return Arch(
        name="vgg",
        notation=SEED_COUNTS["vgg"].notation,
        widths=widths,
        kernel=3,
        pools=pools,
        padding="same",
        ceil_pool=False,
    )


def get_arch(name: str, depth: int | None = None) -> Arch:
    """``base``, ``vgg`` or ``ch<N>`` (the seed's ch32, ch64, ch128; any N for small tests)."""
    match = re.fullmatch(r"ch(\d+)", name)
    if match:
        return channel_arch(int(match.group(1)), depth)
    if depth is not None:
        raise ValueError(f"--depth applies to the ch<N> models only, not {name!r}")
    if name == "base":
        return base_arch()
    if name == "vgg":
        return vgg_arch()
    raise ValueError(f"unknown model {name!r}: choose base, vgg or ch<N> (ch32, ch64, ch128)")


class KwsNet(nn.Module):
    def __init__(
        self, arch: Arch, dropout: float = 0.0, bn: bool = False, init: str = "keras"
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, not {init!r}")
        self.arch = arch
        layers: list[nn.Module] = []
        channels = 1
        for width, pool in zip(arch.widths, arch.pools):
            layers.append(nn.Conv1d(channels, width, arch.kernel, padding=arch.conv_padding()))
            if bn:
                layers.append(nn.BatchNorm1d(width))
            # Pool, then ReLU: the same values and gradients as ReLU then pool (max commutes
            # with a non-decreasing function; both keep the first of tied maxima, and ReLU's
            # backward zeroes what is not positive either way), with ReLU on a third of the
            # samples: ~20 % less CPU per training step (bench/kws_bench.py). Parameter-free
            # modules only change places, so checkpoints' keys are unchanged.
            if pool > 1:
                layers.append(nn.MaxPool1d(pool, ceil_mode=arch.ceil_pool))
            layers.append(nn.ReLU(inplace=True))
            channels = width
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        fan_in = channels * arch.output_length()
        for width in arch.hidden:
            head += [nn.Dropout(dropout), nn.Linear(fan_in, width), nn.ReLU(inplace=True)]
            fan_in = width
        head += [nn.Dropout(dropout), nn.Linear(fan_in, NUM_CLASSES)]
        self.classifier = nn.Sequential(*head)
        if init == "keras":
            self.apply(keras_init)

    def forward(self, waves: Tensor) -> Tensor:
        """``waves``: [batch, 16000] or [batch, 1, 16000] floats → [batch, 16] logits."""
        if waves.dim() == 2:
            waves = waves.unsqueeze(1)
        return self.classifier(self.features(waves))

    def conv_layers(self) -> list[nn.Conv1d]:
        return [m for m in self.features if isinstance(m, nn.Conv1d)]


def relu_before_pool(net: KwsNet) -> KwsNet:
    """``net`` with each block's ReLU moved back before its max-pool (the textbook order, as
    kws built it before): the reference that tests and bench/kws_bench.py compare against."""
    layers = list(net.features)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool1d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    net.features = nn.Sequential(*layers)
    return net


def keras_init(module: nn.Module) -> None:
    """Keras' (and tf.layers') defaults: ``glorot_uniform`` kernels, ``zeros`` biases.

    Batch norm keeps PyTorch's init, which is Keras' too (gamma 1, beta 0)."""
    if isinstance(module, (nn.Conv1d, nn.Linear)):
        # PyTorch's fans for a [out, in, k] kernel are in*k and out*k, as Keras computes them.
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint needs to rebuild its network."""

    model: str
    depth: int | None = None  # None: the model's own depth (ch32: 8 … ch128: 9)
    dropout: float = 0.0  # the drop rate nn.Dropout applies (see drop_rate for "DO(p)")
    bn: bool = False
    init: str = "keras"  # see INITS

    def __post_init__(self) -> None:
        # "--depth 8" on ch32 is ch32 itself: one name and one spec for one network.
        match = re.fullmatch(r"ch(\d+)", self.model)
        if match and self.depth == DEFAULT_DEPTH.get(int(match.group(1)), 8):
            object.__setattr__(self, "depth", None)

    def arch(self) -> Arch:
        return get_arch(self.model, self.depth)

    def build(self) -> KwsNet:
        return KwsNet(self.arch(), dropout=self.dropout, bn=self.bn, init=self.init)

    def label(self) -> str:
        """E.g. "ch128 do0.25+bn", "ch32 d5 do0.75", "base", "ch32 torch-init".

        ``do<p>`` is always the drop rate; the seed's "DO(p)" names are kws.table's."""
        parts = [self.model]
        if self.depth is not None:
            parts.append(f"d{self.depth}")
        options = ([f"do{self.dropout:g}"] if self.dropout else []) + (["bn"] if self.bn else [])
        if options:
            parts.append("+".join(options))
        if self.init != "keras":
            parts.append(f"{self.init}-init")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        # Checkpoints from before ``init`` existed were all trained from PyTorch's init.
        return cls(
            **{k: data[k] for k in ("model", "depth", "dropout", "bn")},
            init=data.get("init", "torch"),
        )


def param_count(model: nn.Module) -> int:
    """Trainable parameters (batch norm's weight and bias count; its running stats do not)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
