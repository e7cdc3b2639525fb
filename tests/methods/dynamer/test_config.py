"""DynaMer's options: validation with named errors, the ``layers`` option, hidden widths, the presets."""
import pytest

from medvtab.errors import MedvtabError
from medvtab.methods import make_config
from medvtab.methods.dynamer.config import DynaMerConfig, parse_layers


def test_invalid_options_are_named():
    for options, field in [({"keep_ratio": 0}, "keep_ratio"), ({"top_k": 5}, "top_k"),
                           ({"gate_dim": "width/3"}, "gate_dim"), ({"colour": "red"}, "colour")]:
        with pytest.raises(MedvtabError, match=field):
            make_config("dynamer", options)


def test_layers_option_parses_all_last_k_and_lists():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("last:2", 4) == [2, 3]
    assert parse_layers(" 3,0,3 ", 4) == [0, 3]
    for bad in ("last:9", "last:0", "7", "-1", "x", ""):
        with pytest.raises(MedvtabError, match="layers"):
            parse_layers(bad, 4)


def test_layers_option_places_adapters(dynamer):
    assert sorted(int(i) for i in dynamer(layers="last:2").runner.hooks) == [2, 3]
    assert sorted(int(i) for i in dynamer(layers="0,3").runner.hooks) == [0, 3]


def test_hidden_widths_default_to_a_share_of_the_width():
    assert DynaMerConfig().widths(768) == (32, 32)  # the paper's: width / 24
    assert DynaMerConfig(preset="lite").widths(768) == (64, 64)
    assert DynaMerConfig().widths(96) == (8, 8)  # never below MIN_HIDDEN
    assert DynaMerConfig(bottleneck=32, router_hidden=16).widths(96) == (32, 16)


def test_defaults_are_the_papers_configuration_and_lite_fills_only_what_is_not_given():
    paper = DynaMerConfig()
    assert (paper.router, paper.gate_dim, paper.balance_weight, paper.gated_layers) == ("shared", "width", 0.0, "all")
    lite = make_config("dynamer", {"preset": "lite"})
    assert (lite.router, lite.gate_dim, lite.balance_weight, lite.width_divisor) == ("per-stream", "1", 0.01, 12)
    mixed = make_config("dynamer", {"preset": "lite", "gate_dim": "width/2", "balance_weight": "0"})
    assert (mixed.router, mixed.gate_dim, mixed.balance_weight) == ("per-stream", "width/2", 0.0)
    assert make_config("dynamer", mixed.model_dump()) == mixed  # a run's config.json rebuilds it
    with pytest.raises(MedvtabError, match="preset"):
        make_config("dynamer", {"preset": "huge"})
