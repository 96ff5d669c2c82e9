"""Every setting is documented, and bad settings are refused by name."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from headguard.settings import Settings

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"


def test_every_setting_is_in_the_operations_table():
    text = OPERATIONS.read_text()
    missing = [name for name in Settings.model_fields if f"`HEADGUARD_{name.upper()}`" not in text]
    assert not missing, missing


@pytest.mark.parametrize(("name", "value"), [("MODE", "loud"), ("PORT", "70000"), ("REJECT_FPR", "0.7"),
                                             ("MAX_BATCH_SIZE", "0")])
def test_bad_settings_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(f"HEADGUARD_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()
