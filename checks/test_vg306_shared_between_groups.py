"""VG306: a file written on an app Machine is visible from the other groups' Machines.

This is the check that catches the incident empirically: the probe one app Machine wrote
under MEDIA_ROOT is looked for on every worker Machine, then removed.
"""

import pytest

from volguard.rules import machine as rules

pytestmark = pytest.mark.volguard("VG306")


def test_a_file_written_by_the_app_is_seen_by_the_worker(
    observations, machine_context, volguard_report
):
    volguard_report(rules.not_visible_across(observations, machine_context))
