"""Any value of any type, for any setting of the four programs, is a value or a SettingsError:
never another exception (the programs print SettingsError as one line and exit 2)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfget.config import SETTINGS as DFGET_SETTINGS
from dfget.config import options_from
from peerwire.settings import Settings, SettingsError
from proxy.config import SETTINGS as DAEMON_SETTINGS
from proxy.config import DaemonConfig, ProxyConfig
from tracker.config import SETTINGS as TRACKER_SETTINGS
from tracker.config import TrackerConfig
from tracker.topconfig import SETTINGS as TOP_SETTINGS
from tracker.topconfig import TopConfig

SCALARS = (
    st.text(max_size=12)
    | st.sampled_from(["", "0", "-1", "1e3", "20M", "5s", "none", "unlimited", "http://t:1", "a=b"])
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def build(program: Settings, loaded: Any) -> None:
    if program is TRACKER_SETTINGS:
        loaded.build(TrackerConfig)
    elif program is TOP_SETTINGS:
        loaded.build(TopConfig)
    elif program is DAEMON_SETTINGS:
        daemon = loaded.build(DaemonConfig)
        loaded.build(ProxyConfig, "proxy", host=daemon.proxy_host, port=daemon.proxy_port)
    else:
        options_from(loaded, {"url": "http://origin/x", "output": "x"})


PROGRAMS = [TRACKER_SETTINGS, DFGET_SETTINGS, DAEMON_SETTINGS, TOP_SETTINGS]


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.program)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_any_value_is_a_setting_or_a_settings_error(program: Settings, data: st.DataObject) -> None:
    setting = data.draw(st.sampled_from([s for s in program.settings if s.flag_name]))
    value = data.draw(VALUES)
    with contextlib.suppress(SettingsError):
        build(program, program.load({setting.name: value}, {}, None))


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.program)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_variable_is_a_setting_or_a_settings_error(
    program: Settings, data: st.DataObject
) -> None:
    setting = data.draw(st.sampled_from(list(program.settings)))
    names = program.env_names(setting) or ("UNUSED",)
    text = data.draw(st.text(max_size=20).filter(lambda t: "\0" not in t))
    with contextlib.suppress(SettingsError):
        build(program, program.load({}, {names[0]: text}, None))


def test_a_file_of_the_wrong_shape_is_a_settings_error(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('tracker = [5]\n[proxy]\nrules = "x"\n')
    with pytest.raises(SettingsError, match="tracker=\\[5\\]: expected text, not a number"):
        DAEMON_SETTINGS.load({}, {}, file)
