"""One check for the keys of every ``from_dict`` (settings dataclasses, cameras, source frames), and one way to quote a
caught error (``errors.short_message``)."""

from __future__ import annotations

import pytest
import torch

from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.errors import ConfigError, check_keys, short_message
from dreamedit3d_core.geometry import SourceFrame
from dreamedit3d_core.types import ConfigDict


def test_check_keys_names_the_unknown_and_the_missing_keys():
    check_keys("thing", {"a": 1}, ("a", "b"))  # a known subset passes
    with pytest.raises(ConfigError, match=r"unknown thing keys \['c'\]; valid keys are \['a', 'b'\]"):
        check_keys("thing", {"a": 1, "c": 2}, ("a", "b"))
    with pytest.raises(ConfigError, match=r"thing settings lack keys \['b'\]; give \['a', 'b'\]"):
        check_keys("thing", {"a": 1}, ("a", "b"), required=("a", "b"))


def test_every_from_dict_refuses_unknown_keys_through_the_one_check():
    from dreamedit3d_core.batch.plan import BatchSettings
    from dreamedit3d_core.personalize.textual_inversion import TIConfig
    from dreamedit3d_core.personalize.train import ConfigDict as TrainConfigDict

    assert TrainConfigDict is ConfigDict  # the old import path of the batch settings still works
    assert issubclass(TIConfig, ConfigDict) and issubclass(BatchSettings, ConfigDict)
    assert TIConfig.from_dict(TIConfig(steps=7).to_dict()) == TIConfig(steps=7)
    with pytest.raises(ConfigError, match=r"unknown TIConfig keys \['stepz'\]; valid keys are \[.*'steps'"):
        TIConfig.from_dict({"stepz": 7})

    cams = MVCameras()
    again = MVCameras.from_dict(cams.to_dict())
    assert torch.equal(again.azimuth_deg, cams.azimuth_deg) and again.fov_deg == cams.fov_deg
    with pytest.raises(ConfigError, match=r"unknown camera keys \['fov'\]"):
        MVCameras.from_dict({**cams.to_dict(), "fov": 40.0})
    with pytest.raises(ConfigError, match=r"camera settings lack keys \['radius'\]"):
        MVCameras.from_dict({k: v for k, v in cams.to_dict().items() if k != "radius"})

    with pytest.raises(ConfigError, match=r"unknown source frame keys \['matrix'\]; valid keys are \['to_internal'\]"):
        SourceFrame.from_dict({"matrix": [0.0] * 16})
    with pytest.raises(ConfigError, match=r"source frame settings lack keys \['to_internal'\]"):
        SourceFrame.from_dict({})


def test_short_message_is_one_line_and_cut():
    assert short_message(ValueError("bad\n   header\tvalue")) == "bad header value"
    long = short_message(RuntimeError("x" * 300))
    assert long == "x" * 120 + "..."
    assert short_message(KeyError("k"), limit=5) == "'k'"
