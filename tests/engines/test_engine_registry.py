"""Engine creation settings that do not need an engine."""

from __future__ import annotations

import pytest

from exoquic.engines.registry import THREADS_VARIABLE, engine_threads_setting


def test_no_thread_setting_leaves_the_engine_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)
    assert engine_threads_setting() is None


def test_thread_setting_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_VARIABLE, " 3 ")
    assert engine_threads_setting() == 3


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", "1.5"])
def test_bad_thread_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(THREADS_VARIABLE, value)
    with pytest.raises(ValueError, match=THREADS_VARIABLE):
        engine_threads_setting()
