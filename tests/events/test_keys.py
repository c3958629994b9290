"""Key names: one workspace's keys share a Redis Cluster slot; names are checked whole."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from stageline.errors import InvalidArgument
from stageline.events import keys


@pytest.mark.parametrize("workspace", ["default", "acme.prod", "w-1_2", "x" * 64])
def test_a_workspace_keys_share_one_cluster_slot(workspace: str) -> None:
    names = [
        keys.log_key(workspace),
        keys.stream_key(workspace, "run-1"),
        keys.stream_key(workspace, "pipeline:ingest@3"),
        keys.graph_name(workspace),
        keys.idempotency_key(workspace, "k"),
    ]
    assert {key_slot(n.encode()) for n in names} == {key_slot(workspace.encode())}
    assert len(set(names)) == len(names)


def test_different_workspaces_use_different_keys() -> None:
    assert keys.log_key("a") != keys.log_key("b")
    assert keys.stream_key("a", "s") != keys.stream_key("b", "s")
    assert keys.stream_key("a", "s") != keys.stream_key("a", "t")


@pytest.mark.parametrize("name", ["a\n", "a\nb", "\na", "a\r", "a\x00"])
def test_control_characters_never_pass(name: str) -> None:
    with pytest.raises(InvalidArgument):
        keys.check_workspace(name)
    with pytest.raises(InvalidArgument):
        keys.check_stream(name)


def test_valid_names_are_returned_unchanged() -> None:
    assert keys.check_workspace("acme.prod-1") == "acme.prod-1"
    assert keys.check_stream("run-01H:x@y=z+1") == "run-01H:x@y=z+1"


def test_the_reserved_workspace_is_refused_as_reserved() -> None:
    with pytest.raises(InvalidArgument, match=r"^workspace '_global' is reserved"):
        keys.check_workspace(keys.GLOBAL_WORKSPACE)
    assert keys.check_workspace(keys.GLOBAL_WORKSPACE, internal=True) == keys.GLOBAL_WORKSPACE
    with pytest.raises(InvalidArgument, match="starting with a letter or digit"):
        keys.check_workspace("_other")
