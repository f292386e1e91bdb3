"""The personalisation options are the core's str Enums (issue 12 item 6): one list, shown by the nodes' combos,
accepted as enum members or plain strings, kept in the configs as plain strings, anything else refused."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.nodes


def test_the_combos_offer_the_core_options_and_the_configs_keep_plain_strings(pack):
    from dreamedit3d_pack.dreamedit3d_core.errors import ConfigError
    from dreamedit3d_pack.dreamedit3d_core.personalize.finetune import MODES, FinetuneMode, FTConfig
    from dreamedit3d_pack.dreamedit3d_core.personalize.objective import MIXED_PRECISION, MixedPrecision

    assert MODES == ("full", "lora") and MIXED_PRECISION == ("no", "bf16", "fp16")
    inputs = {i.id: i for i in pack.NODES["DreamEdit3D_MVFineTune"].define_schema().inputs}
    assert inputs["mode"].options == ["full", "lora"]
    assert inputs["mixed_precision"].options == ["no", "bf16", "fp16"]

    config = FTConfig(mode=FinetuneMode.LORA, mixed_precision=MixedPrecision.BF16)
    assert type(config.mode) is str and config.mode == "lora"
    assert type(config.mixed_precision) is str and config.mixed_precision == "bf16"
    assert FTConfig(mode="full", mixed_precision="no") == FTConfig(mode=FinetuneMode.FULL, mixed_precision=MixedPrecision.NO)
    with pytest.raises(ConfigError, match="mode must be one of"):
        FTConfig(mode="half")
    with pytest.raises(ConfigError, match="mixed_precision must be one of"):
        FTConfig(mixed_precision="fp8")
