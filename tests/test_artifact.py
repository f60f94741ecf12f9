"""models/artifact.py: the one reader of config.json and PUBLISHED, with errors that name the file."""

from __future__ import annotations

import json

import pytest

from core import paths, storage
from models import artifact


def _config(workdir: str, version: str, text: str) -> None:
    storage.write_text(storage.join(paths.model_dir(workdir, version), "config.json"), text)


def test_reads_the_typed_config_of_the_published_model(tmp_path) -> None:
    work = str(tmp_path)
    cfg = {
        "version": "v1",
        "embedding_dim": 64,
        "image_size": 48,
        "date": "2026-01-01",
        "heads": ["category", "instance"],
        "vocabularies": {"category": ["mug", ""]},
        "backbone": "small_cnn",
        "train_config": {"epochs": 2},  # fields readers do not use are ignored
    }
    _config(work, "v1", json.dumps(cfg))
    storage.write_text(paths.published_model_pointer(work), "v1\n")
    got = artifact.resolve(work)
    assert got == artifact.ModelConfig(
        "v1", 64, 48, "2026-01-01", ("category", "instance"), {"category": ["mug", ""]}, "small_cnn"
    )
    assert artifact.resolve(work, "v1") == got


def test_nothing_published_is_a_clear_error(tmp_path) -> None:
    pointer = paths.published_model_pointer(str(tmp_path))
    with pytest.raises(artifact.ModelArtifactError, match=f"no published model at {pointer}"):
        artifact.published_version(str(tmp_path))
    storage.write_text(pointer, "\n")  # an empty pointer is reported as empty, not as missing
    with pytest.raises(artifact.ModelArtifactError, match=f"pointer {pointer} is empty") as e:
        artifact.resolve(str(tmp_path))
    assert "does not exist" not in str(e.value)


def test_a_missing_or_bad_config_names_the_file(tmp_path) -> None:
    work = str(tmp_path)
    uri = artifact.config_uri(work, "v2")
    with pytest.raises(artifact.ModelArtifactError, match=f"model v2 has no config.json at {uri}"):
        artifact.read_config(work, "v2")
    _config(work, "v2", '{"embedding_dim": 8,')
    with pytest.raises(artifact.ModelArtifactError, match=f"{uri} is not valid JSON"):
        artifact.read_config(work, "v2")
    _config(work, "v2", json.dumps({"embedding_dim": 8}))
    with pytest.raises(
        artifact.ModelArtifactError, match="needs integer embedding_dim and image_size"
    ):
        artifact.read_config(work, "v2")


def test_a_missing_saved_model_is_caught_before_loading(tmp_path) -> None:
    uri = paths.embedder_dir(str(tmp_path), "v1")
    with pytest.raises(artifact.ModelArtifactError, match=f"no SavedModel at {uri}"):
        artifact.check_saved_model(uri)
