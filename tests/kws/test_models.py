"""Model layouts: the seed's parameter counts, exactly, and the shapes the layouts promise."""

import pytest
import torch

from kws.models import (
    MODEL_NAMES,
    SEED_COUNTS,
    KwsNet,
    ModelSpec,
    family_widths,
    get_arch,
    param_count,
    relu_before_pool,
)

SEED_TABLE = {
    "base": 1_855_056,
    "ch32": 94_768,
    "ch64": 363_600,
    "vgg": 470_736,
    "ch128": 2_071_184,
}


@pytest.mark.parametrize("name", list(SEED_TABLE))
def test_parameter_count_equals_the_seed_table(name):
    with_bn = SEED_COUNTS[name].with_bn
    assert param_count(KwsNet(get_arch(name), dropout=0.5, bn=with_bn)) == SEED_TABLE[name]


def test_only_ch128_count_is_the_batch_norm_variant():
    assert [n for n in MODEL_NAMES if SEED_COUNTS[n].with_bn] == ["ch128"]
    # batch norm adds a weight and a bias per conv channel
    arch = get_arch("ch32")
    assert param_count(KwsNet(arch, bn=True)) - param_count(KwsNet(arch)) == 2 * sum(arch.widths)


def test_dropout_adds_no_parameters():
    arch = get_arch("ch64")
    assert param_count(KwsNet(arch, dropout=0.75)) == param_count(KwsNet(arch))


def test_flatten_lengths_of_the_seed_models():
    assert {n: get_arch(n).output_length() for n in MODEL_NAMES} == {
        "base": 8,
        "ch32": 7,
        "ch64": 7,
        "vgg": 7,
        "ch128": 2,
    }


def test_depth_sweep_widths_follow_the_added_work_tables():
    # "3 CONV(5, 32)" … "5 CONV(5, 64)" … "9 CONV(5, 128)" for the ch32 family
    assert [family_widths(32, d)[-1] for d in range(1, 10)] == [32] * 4 + [64] * 4 + [128]
    assert [family_widths(128, d)[-1] for d in range(1, 10)] == [128] * 4 + [256] * 4 + [512]
    assert get_arch("ch32", depth=5).notation == "5 CONV(5, 64)"
    assert get_arch("ch128").notation == "9 CONV(5, 512)"


def test_forward_maps_a_batch_of_clips_to_16_logits():
    model = KwsNet(get_arch("ch8", depth=6), dropout=0.25, bn=True).eval()
    with torch.no_grad():
        assert model(torch.zeros(3, 16000)).shape == (3, 16)
        assert model(torch.zeros(2, 1, 16000)).shape == (2, 16)


def test_bad_model_names_and_options_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        get_arch("resnet")
    with pytest.raises(ValueError, match="depth"):
        get_arch("ch32", depth=10)
    with pytest.raises(ValueError, match="ch<N> models only"):
        get_arch("base", depth=3)
    with pytest.raises(ValueError, match="dropout"):
        KwsNet(get_arch("ch8"), dropout=1.0)


def test_spec_label_and_round_trip():
    spec = ModelSpec("ch128", dropout=0.25, bn=True)
    assert spec.label() == "ch128 do0.25+bn"
    assert ModelSpec("ch32", depth=5).label() == "ch32 d5"
    assert ModelSpec("ch32", depth=8) == ModelSpec("ch32")  # its own depth, said or not
    assert ModelSpec("ch128", depth=9).label() == "ch128"
    assert ModelSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "spec",
    [ModelSpec("ch8", depth=4), ModelSpec("ch8", depth=3, bn=True), ModelSpec("base")],
    ids=lambda s: s.label(),
)
def test_pooling_before_relu_gives_the_same_outputs_and_gradients(spec):
    # Silence (a conv's bias repeated: ties in every pooling window), clipped loud stretches
    # (ties of the same positive value) and noise, through both orders from the same weights.
    waves = torch.randn(3, 16000) * 0.1
    waves[0, 8000:] = 0.0
    waves[1, :4000] = 1.0
    waves[2, 1000:9000] = -1.0
    labels = torch.tensor([0, 5, 15])
    torch.manual_seed(1)
    ours = spec.build()
    with torch.no_grad():  # biases away from zero, so silence gives positive equal maxima
        for conv in ours.conv_layers():
            conv.bias.uniform_(-0.05, 0.2)
    textbook = relu_before_pool(spec.build())
    textbook.load_state_dict(ours.state_dict())
    assert [type(m) for m in ours.features] != [type(m) for m in textbook.features]
    results = []
    for net in (ours, textbook):
        net.train()
        torch.manual_seed(2)  # the same dropout masks
        logits = net(waves)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        results.append((logits.detach(), [p.grad.clone() for p in net.parameters()]))
    (ours_logits, ours_grads), (book_logits, book_grads) = results
    assert torch.equal(ours_logits, book_logits)
    assert all(torch.equal(a, b) for a, b in zip(ours_grads, book_grads))
    assert any(g.abs().sum() > 0 for g in ours_grads)
