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


def test_the_memory_tooltips_quote_the_bench_figures_of_bench_results(pack):
    """MVFineTune's memory figures are the bench's (bench/RESULTS.md "GPU memory"), and its tooltips quote them."""
    import re
    from pathlib import Path

    from dreamedit3d_pack.nodes import personalize

    results = (Path(__file__).resolve().parents[2] / "bench" / "RESULTS.md").read_text()
    section = results[results.index("## GPU memory"):]
    section = section[:section.find("\n## ", 5)] if "\n## " in section[5:] else section
    after = {}
    for row in re.findall(r"^\| MVFineTune ([^|]+)\|[^|]*\|[^|]*\| \**([0-9.]+)\**", section, flags=re.M):
        after[row[0].strip()] = float(row[1])
    assert personalize.MEMORY == {
        "full": after["full, bf16 autocast, fused AdamW"],
        "full_8bit": after["full, bf16, 8-bit AdamW (emulated: uint8 states + block absmax; bitsandbytes not installed here)"],
        "full_checkpointing": after["full, bf16 + gradient checkpointing"],
        "full_text_encoder": after["full, bf16 + train_text_encoder"],
        "lora": after["LoRA, fp16 autocast"],
        "lora_checkpointing": after["LoRA, fp16 + gradient checkpointing"],
    }
    tips = {i.id: i.tooltip for i in pack.NODES["DreamEdit3D_MVFineTune"].define_schema().inputs}
    assert "full 13.7 GiB, lora 3.6 GiB" in tips["mode"]
    assert "13.7 GiB with adamw, 8.9 GiB with adamw8bit" in tips["optimizer"]
    assert "full 13.7 GiB -> 15.1 GiB, lora 3.6 GiB -> 3.2 GiB" in tips["gradient_checkpointing"]
    assert "13.7 GiB -> 17.6 GiB" in tips["train_text_encoder"]
