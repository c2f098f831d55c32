"""VG308: volguard found the app process or knows MEDIA_ROOT, so VG303 and VG304 were checked."""

import pytest

from volguard.rules import machine as rules

pytestmark = pytest.mark.volguard("VG308")


def test_app_process_or_media_root_known(observation, machine_context, volguard_report):
    volguard_report(rules.no_app_process_nor_media_root(observation, machine_context))
