"""Settings schema, typed config, runtime toggles and the NaN-check modes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lib_accel.config import NAN_CHECK_MODES, SETTINGS, AccelConfig
from lib_accel.runtime.toggles import RuntimeToggles, is_channels_last, make_nan_check


def test_every_setting_is_prefixed_explained_and_maps_to_the_config():
    fields = set(AccelConfig.__dataclass_fields__)
    for spec in SETTINGS:
        assert spec.key.startswith("accel_")
        assert len(spec.explanation) > 40, spec.key
        assert spec.key[len("accel_"):] in fields
        if spec.choices:
            assert spec.default in spec.choices
    assert len(SETTINGS) == len(fields)


def test_config_defaults_and_values():
    assert AccelConfig.from_options(lambda key: None) == AccelConfig()
    values = {"accel_tf32": "on", "accel_nan_check": "full", "accel_chunk_memory_fraction": 0.5,
              "accel_autotune_persist": "false", "accel_autotune_repeats": "5"}
    config = AccelConfig.from_options(values.get)
    assert (config.tf32, config.nan_check, config.chunk_memory_fraction) == ("on", "full", 0.5)
    assert config.autotune_persist is False and config.autotune_repeats == 5


@pytest.mark.parametrize("key,value", [
    ("accel_tf32", "maybe"), ("accel_chunk_memory_fraction", 7.0), ("accel_autotune_repeats", "many"),
    ("accel_autotune_persist", "perhaps"),
    ("accel_chunk_memory_fraction", float("nan")), ("accel_chunk_memory_fraction", "nan"),  # nan passes < and >
    ("accel_compile_cudagraph_min_free_gb", float("inf")), ("accel_chunk_memory_fraction", "-inf"),
    ("accel_autotune_repeats", 2.9), ("accel_compile_cache_limit", "7.5"),  # not truncated to 2 / 7
    ("accel_autotune_repeats", True), ("accel_chunk_memory_fraction", False),  # bools are not numbers
    ("accel_tf32", True), ("accel_nan_check", 1), ("accel_unet_dtype", ["fp16"]),  # choices are strings
    ("accel_compile_mode", "fast"), ("accel_live_stats", 2), ("accel_infotext", {}),
    ("accel_compile_prewarm", 512), ("accel_compile_checkpoints", [1, 2]), ("accel_autotune_repeats", 10**400),
])
def test_invalid_values_fall_back_with_a_warning(key, value):
    warnings = []
    config = AccelConfig.from_options({key: value}.get, warn=warnings.append)
    assert config == AccelConfig()
    assert len(warnings) == 1 and key in warnings[0] and "using the default" in warnings[0]


@pytest.mark.parametrize("key,value,expected", [
    ("accel_autotune_repeats", 4.0, 4),  # the Settings page's sliders send floats for int settings
    ("accel_autotune_repeats", "5", 5), ("accel_compile_cudagraph_min_free_gb", 1, 1.0),
    ("accel_chunk_memory_fraction", "0.3", 0.3), ("accel_compile_cudagraph_min_free_gb", 0, 0.0),
    ("accel_infotext", True, True), ("accel_live_stats", "False", False),
    ("accel_compile_checkpoints", ["a.safetensors", " "], ("a.safetensors",)),
])
def test_valid_values_are_taken_with_their_declared_type(key, value, expected):
    warnings = []
    got = getattr(AccelConfig.from_options({key: value}.get, warn=warnings.append), key[len("accel_"):])
    assert got == expected and type(got) is type(expected) and not warnings


def test_flags_are_set_and_restored_to_their_previous_values():
    bench, tf32 = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32
    toggles = RuntimeToggles()
    try:
        torch.backends.cuda.matmul.allow_tf32 = True  # as the WebUI sets it
        changes = toggles.apply(AccelConfig(cudnn_benchmark="on", tf32="off"))
        assert torch.backends.cudnn.benchmark is True and torch.backends.cuda.matmul.allow_tf32 is False
        assert changes
        assert toggles.apply(AccelConfig(cudnn_benchmark="on", tf32="off")) == [], "re-applying is a no-op"
        toggles.apply(AccelConfig(tf32="default", cudnn_benchmark="on"))
        assert torch.backends.cuda.matmul.allow_tf32 is True, "default returns to the pre-Accel value"
        toggles.undo()
        assert torch.backends.cudnn.benchmark is bench
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = bench, tf32


def test_channels_last_applied_and_undone_in_place():
    unet = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 4, 3))
    weight = unet[0].weight
    toggles = RuntimeToggles()
    toggles.apply(AccelConfig(channels_last="on"), unet)
    assert is_channels_last(unet) and unet[0].weight is weight, "converted in place, same Parameter"
    x = torch.randn(1, 4, 16, 16)
    out_cl = unet(x)
    toggles.apply(AccelConfig(channels_last="off"), unet)
    assert not is_channels_last(unet)
    torch.testing.assert_close(unet(x), out_cl)
    toggles.apply(AccelConfig(channels_last="default"), unet, webui_channels_last=True)
    assert is_channels_last(unet), "default follows --opt-channelslast"
    toggles.undo()
    assert not is_channels_last(unet)


class Nans(Exception):
    pass


def webui_check(x, where):  # the WebUI's first-element check
    if torch.isnan(x[(0,) * x.dim()]):
        raise Nans(where)


@pytest.mark.parametrize("mode", NAN_CHECK_MODES)
def test_nan_check_modes(mode):
    check = make_nan_check(mode, webui_check)
    first = torch.zeros(2, 3).index_fill_(1, torch.tensor([0]), float("nan"))
    later = torch.zeros(2, 3)
    later[1, 2] = float("nan")
    if mode == "off":
        check(first, "unet")
        check(later, "vae")
        return
    with pytest.raises(Nans, match="vae"):
        check(first, "vae")
    if mode == "full":
        with pytest.raises(Nans, match="unet"):
            check(later, "unet")
    else:
        check(later, "unet")
    check(torch.zeros(4), "unet")


def test_unknown_nan_mode():
    with pytest.raises(ValueError):
        make_nan_check("sometimes", webui_check)
