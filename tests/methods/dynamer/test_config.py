"""DynaMer's options: validation with named errors, the ``layers`` option, hidden widths."""
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


def test_hidden_widths_default_to_a_twelfth_of_the_width():
    assert DynaMerConfig().widths(768) == (64, 64)
    assert DynaMerConfig().widths(24) == (4, 4)  # never below MIN_HIDDEN
    assert DynaMerConfig(bottleneck=32, router_hidden=16).widths(96) == (32, 16)


def test_field_order_and_defaults_are_those_run_ids_hash():
    assert list(DynaMerConfig().model_dump().items()) == [
        ("num_experts", 4), ("top_k", 2), ("bottleneck", None), ("router_hidden", None), ("gates", "both"),
        ("gate_dim", "1"), ("layers", "all"), ("keep_ratio", 1.0), ("skip_mode", "adapter"), ("balance_weight", 0.01)]
