"""serving.package: the archives of a model and its reference set."""

import torch

from serving.package import package


def test_package__a_folder_stored_with_a_built_in_dataset_is_not_read(trained, tmp_path):
    """A checkpoint whose config names a data_dir beside synthetic (written when such a
    folder was ignored, or uploaded so) deploys: its reference set is the generated one."""
    checkpoint, _, _ = trained
    state = torch.load(checkpoint, weights_only=True)
    state["config"] = state["config"] | {"data_dir": str(tmp_path / "nothing-here")}
    torch.save(state, tmp_path / "with-folder.pt")
    packaged = package(tmp_path / "with-folder.pt", tmp_path / "store", "folder",
                       reference_limit=40)
    assert sorted(packaged.archives) == ["embed", "knn"]
    assert all(path.is_file() for path in packaged.archives.values())
