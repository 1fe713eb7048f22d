"""An upload's staging folder on the API's disk: held while the upload lives, removed after
it, and swept when the process that held it died."""

from mec_platform.uploads import remove_stale_staging, staging, staging_root


def test_staging__a_held_upload_is_kept_and_one_no_process_holds_is_removed():
    dead = staging_root() / "dataset-of-a-killed-api"
    (dead / "version-1").mkdir(parents=True)
    (dead / "upload").write_bytes(b"half an archive")
    with staging() as live:  # sweeps first
        assert not dead.exists()
        (live / "upload").write_bytes(b"an archive on its way")
        assert remove_stale_staging() == []  # held while the upload lives
        assert live.is_dir()
    assert not live.exists()
