"""VG305: the volume has free space and inodes left."""

import pytest

from volguard.rules import machine as rules

pytestmark = pytest.mark.volguard("VG305")


def test_free_space_and_inodes(observation, machine_context, volguard_report):
    volguard_report(rules.low_space(observation, machine_context))
