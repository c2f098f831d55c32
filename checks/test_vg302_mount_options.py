"""VG302: the volume is mounted read-write, with the expected filesystem type."""

import pytest

from volguard.rules import machine as rules

pytestmark = pytest.mark.volguard("VG302")


def test_mounted_read_write_with_the_expected_type(observation, machine_context, volguard_report):
    volguard_report(rules.read_only_or_odd_filesystem(observation, machine_context))
