"""What the `mec` commands print for a job's time left (nothing before the API has a rate,
then rounded as the dashboard rounds it: never `-:--:--`, never '2 s' for an hour's job) and
for a dataset version's split; and that deleting commands ask first."""

import pytest
from click.testing import CliRunner

from mec_client.cli import _left, _split, main


def test_time_left_is_said_as_the_dashboard_says_it():
    assert _left(None) == "" and _left(0) == ""
    assert _left(30) == "under a minute left"
    assert _left(600) == "about 10 min left"
    assert _left(3599) == "about 1 h left"  # 59.98 min: an hour, not "60 min"
    assert _left(7200) == "about 2 h left"
    assert _left(127 * 60) == "about 2 h 10 min left"  # tens of minutes past the hour


def test_a_versions_split_is_said_in_words():
    assert _split({"test_fraction": 0.25, "seed": 0}) == \
        "25% of each class held out for testing (seed 0)"
    assert _split({"given": True}) == "the archive's own train and test folders"


@pytest.mark.parametrize("command", [["datasets", "rm", "shapes"], ["gallery", "delete", "shop"]])
def test_deleting_commands_ask_first_and_stop_on_no(command):
    """Answered "n", nothing is sent: the API at this URL does not exist, so a request would
    fail with a connection error instead of the abort."""
    done = CliRunner().invoke(main, command, input="n\n",
                              env={"MEC_API_URL": "http://127.0.0.1:9", "MEC_API_KEY": "k"})
    assert done.exit_code == 1 and done.output.rstrip().endswith("Aborted!")
    assert "[y/N]" in done.output
