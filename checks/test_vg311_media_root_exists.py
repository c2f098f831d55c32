"""VG311: MEDIA_ROOT exists on the Machine (or the app user's write test speaks for it)."""

import pytest

from volguard.rules import machine as rules

pytestmark = pytest.mark.volguard("VG311")


def test_media_root_exists(observation, machine_context, volguard_report):
    volguard_report(rules.media_root_missing(observation, machine_context))
