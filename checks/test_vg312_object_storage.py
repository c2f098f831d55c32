"""VG312: the running app's Django stores uploads in object storage (media_storage: auto).

Said once for the fleet, so a report that skipped the volume checks for media says why.
"""

import pytest

from volguard.rules import machine as rules

pytestmark = pytest.mark.volguard("VG312")


def test_media_in_object_storage_is_said(observations, machine_context, volguard_report):
    volguard_report(rules.app_uses_object_storage(observations, machine_context))
