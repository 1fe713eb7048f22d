"""What the `mec` commands print for a job's time left: nothing before the API has a rate,
then rounded as the dashboard rounds it (never `-:--:--`, never '2 s' for an hour's job)."""

from mec_client.cli import _left


def test_time_left_is_said_as_the_dashboard_says_it():
    assert _left(None) == "" and _left(0) == ""
    assert _left(30) == "under a minute left"
    assert _left(600) == "about 10 min left"
    assert _left(3599) == "about 1 h left"  # 59.98 min: an hour, not "60 min"
    assert _left(7200) == "about 2 h left"
    assert _left(127 * 60) == "about 2 h 10 min left"  # tens of minutes past the hour
