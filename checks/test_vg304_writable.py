"""VG304: MEDIA_ROOT is writable by the app's own user (a real write, not as root)."""

import pytest

from volguard.rules import machine as rules

pytestmark = pytest.mark.volguard("VG304")


def test_app_user_can_write_media_root(observation, machine_context, volguard_report):
    volguard_report(rules.media_root_not_writable(observation, machine_context))
