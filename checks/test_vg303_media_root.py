"""VG303: MEDIA_ROOT as the running app sees it is inside the mount, and the same in every group."""

import pytest

from volguard.rules import machine as rules

pytestmark = pytest.mark.volguard("VG303")


def test_media_root_inside_the_mount(observation, machine_context, volguard_report):
    volguard_report(rules.media_root_outside_mount(observation, machine_context))


def test_media_root_same_in_every_group(observations, machine_context, volguard_report):
    volguard_report(rules.media_root_differs(observations, machine_context))
