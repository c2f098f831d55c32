"""VG309: the app process has MEDIA_ROOT in its environment (or volguard was given one)."""

import pytest

from volguard.rules import machine as rules

pytestmark = pytest.mark.volguard("VG309")


def test_app_process_has_media_root(observation, machine_context, volguard_report):
    volguard_report(rules.app_process_without_media_root(observation, machine_context))
