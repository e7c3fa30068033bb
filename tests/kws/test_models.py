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
