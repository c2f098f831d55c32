"""VG307: MEDIA_ROOT belongs to the app user and has its write bit."""

import pytest

from volguard.rules import machine as rules

pytestmark = pytest.mark.volguard("VG307")


def test_media_root_owner_and_mode(observation, machine_context, volguard_report):
    volguard_report(rules.owner_or_mode(observation, machine_context))
