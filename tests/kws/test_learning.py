"""No-BN models learn: the check that would have caught PyTorch's default init stalling at ln 16.

Deep no-BN ReLU nets start at a plateau (logits almost constant, loss ln 16 = 2.7726); with
Keras' Glorot-uniform/zero-bias init they leave it, with PyTorch's defaults (whose random conv
biases dwarf the signal) the full ch32 stays on it. Measured as the training split's loss in
eval mode (no dropout) after 2 epochs of the session's 256 training clips.
"""

from __future__ import annotations

import math

import pytest
import torch

from kws.data import load_dataset
from kws.models import ModelSpec
from kws.train import TrainConfig, load_checkpoint, model_from_checkpoint, to_tensor, train

LN16 = math.log(16)


@pytest.fixture(scope="module")
def dataset(synth_set):
    return load_dataset(synth_set)


def training_loss_after(spec: ModelSpec, dataset, out, epochs: int = 2) -> float:
    config = TrainConfig(
        spec, dataset.root, out, epochs=epochs, batch_size=8, lr=1e-3, gpus="none", log=False
    )
    config.progress = False
    train(config, dataset)
    model, _ = model_from_checkpoint(load_checkpoint(out / "last.pt"))
    model.eval()
    split = dataset["train"]
    with torch.no_grad():
        logits = model(to_tensor(split.waves, torch.device("cpu")))
        return float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(split.labels)))


def test_a_no_bn_model_with_dropout_falls_clearly_below_ln16_within_2_epochs(dataset, tmp_path):
    # The seed's "3 CONV(5, 32)" with DO(0.75) as keep_prob (drop rate 0.25), no batch norm.
    loss = training_loss_after(ModelSpec("ch32", depth=3, dropout=0.25), dataset, tmp_path)
    assert loss < LN16 - 0.3, f"training loss {loss:.3f} after 2 epochs (ln 16 = {LN16:.3f})"


def test_pytorch_default_init_leaves_the_full_ch32_on_the_ln16_plateau(dataset, tmp_path):
    # Why kws defaults to the Keras init: this is the run issue 15 reported, in miniature.
    loss = training_loss_after(ModelSpec("ch32", dropout=0.5, init="torch"), dataset, tmp_path)
    assert abs(loss - LN16) < 0.01


def test_keras_init_is_glorot_uniform_with_zero_biases():
    torch.manual_seed(0)
    model = ModelSpec("ch32", dropout=0.5).build()
    for layer in [*model.conv_layers(), model.classifier[-1]]:
        weight = layer.weight.detach()
        fan_in = weight.shape[1] * (weight.shape[2] if weight.dim() == 3 else 1)
        fan_out = weight.shape[0] * (weight.shape[2] if weight.dim() == 3 else 1)
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert float(weight.abs().max()) <= bound
        assert float(weight.abs().max()) > 0.9 * bound  # uniform over the whole range
        assert not layer.bias.any()
    torch_init = ModelSpec("ch32", dropout=0.5, init="torch").build()
    assert torch_init.conv_layers()[0].bias.any()
