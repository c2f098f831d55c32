"""VG310: the probe's facts are complete and well-formed, so the volume checks could be made."""

import pytest

from volguard.rules import machine as rules

pytestmark = pytest.mark.volguard("VG310")


def test_facts_are_complete(observation, machine_context, volguard_report):
    volguard_report(rules.facts_incomplete(observation, machine_context))
