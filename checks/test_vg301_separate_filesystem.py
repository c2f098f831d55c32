"""VG301: the mount destination is a filesystem of its own, not the root filesystem."""

import pytest

from volguard.rules import machine as rules

pytestmark = pytest.mark.volguard("VG301")


def test_destination_is_its_own_filesystem(observation, machine_context, volguard_report):
    volguard_report(rules.not_a_separate_filesystem(observation, machine_context))
