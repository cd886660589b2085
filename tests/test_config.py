"""Settings read from the environment: values parsed, nonsense refused with the variable's name."""
from __future__ import annotations

import pytest

from backend.config import Settings


@pytest.mark.parametrize("raw, expected", [(None, True), ("", True), ("0", False), ("off", False), ("FALSE", False),
                                           ("1", True), ("yes", True), (" on ", True)])
def test_detector_warm_start_flag(monkeypatch, tmp_path, raw, expected):
    if raw is None:
        monkeypatch.delenv("SAMX_DETECTOR_WARM_START", raising=False)
    else:
        monkeypatch.setenv("SAMX_DETECTOR_WARM_START", raw)
    assert Settings.from_env(tmp_path).detector_warm_start is expected


@pytest.mark.parametrize("name, raw", [("SAMX_DETECTOR_WARM_START", "maybe"), ("SAMX_DETECTOR_EPOCHS", "ten"),
                                       ("SAMX_SESSION_HOURS", "0")])
def test_a_bad_value_names_its_variable(monkeypatch, tmp_path, name, raw):
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError, match=name):
        Settings.from_env(tmp_path)
