"""VG313: every Machine of the media groups writes uploads to the same kind of storage.

Some Machines on the volume and some on object storage (as their Django says) is a fleet
mid-cutover: a file saved on one side is missing on the other.
"""

import pytest

from volguard.rules import machine as rules

pytestmark = pytest.mark.volguard("VG313")


def test_uploads_go_to_one_kind_of_storage(observations, machine_context, volguard_report):
    volguard_report(rules.uploads_split_volume_and_bucket(observations, machine_context))
