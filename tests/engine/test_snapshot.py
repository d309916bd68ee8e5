"""Snapshot fingerprints: a snapshot that follows an earlier one hashes exactly as one taken alone."""

from __future__ import annotations

import operator

from support.toyflow import exported, small_net

from pipeline.snapshot import GraphSnapshot


def alone(graph_module):
    return GraphSnapshot.take(graph_module, []).fingerprint


def following(earlier, graph_module):
    snapshot = GraphSnapshot.take(graph_module, [])
    snapshot.follows(earlier)
    return snapshot


def first_call(graph_module):
    return next(node for node in graph_module.graph.nodes if node.op == "call_function")


def double_first_call(graph_module):
    call = first_call(graph_module)
    with graph_module.graph.inserting_after(call):
        doubled = graph_module.graph.call_function(operator.mul, (call, 2))
    call.replace_all_uses_with(doubled, delete_user_cb=lambda user: user is not doubled)


def test_an_untouched_graph_keeps_its_fingerprint():
    graph_module = exported(*small_net())
    earlier = GraphSnapshot.take(graph_module, [])
    fingerprint = earlier.fingerprint
    assert following(earlier, graph_module).fingerprint == fingerprint == alone(graph_module)


def test_a_rewired_node_changes_the_fingerprint_as_it_would_alone():
    graph_module = exported(*small_net())
    earlier = GraphSnapshot.take(graph_module, [])
    before = earlier.fingerprint
    double_first_call(graph_module)
    later = following(earlier, graph_module)
    assert later.fingerprint == alone(graph_module) != before


def test_a_renamed_input_is_spelled_anew_in_the_lines_of_its_users():
    graph_module = exported(*small_net())
    earlier = GraphSnapshot.take(graph_module, [])
    before = earlier.fingerprint
    call = first_call(graph_module)
    assert call.users
    call._rename("renamed_producer")
    later = following(earlier, graph_module)
    assert later.fingerprint == alone(graph_module) != before
    assert "renamed_producer" in "".join(later._lines[""].values())
    assert all("renamed_producer" in later._lines[""][user] for user in call.users), (
        "a user's line still names the producer by its old name"
    )


def test_an_earlier_snapshot_gives_its_lines_up_once_read():
    graph_module = exported(*small_net())
    earlier = GraphSnapshot.take(graph_module, [])
    assert earlier.fingerprint
    assert earlier._lines is not None
    later = following(earlier, graph_module)
    assert later.fingerprint
    assert earlier._lines is None and later._lines is not None


def test_a_snapshot_of_the_same_structure_lends_the_lines_of_the_one_it_matches():
    graph_module = exported(*small_net())
    first = GraphSnapshot.take(graph_module, [])
    assert first.fingerprint
    second = GraphSnapshot.take(graph_module, [])
    assert not first.changed_graphs(second)
    second.has_structure_of(first)
    double_first_call(graph_module)
    third = following(second, graph_module)
    assert third.fingerprint == alone(graph_module) != first.fingerprint
    assert first._lines is None


def test_following_snapshots_keep_no_chain_behind_them():
    graph_module = exported(*small_net())
    first = GraphSnapshot.take(graph_module, [])
    second = following(first, graph_module)
    third = following(second, graph_module)
    assert second._earlier is None and third._earlier is second
    assert second.fingerprint == third.fingerprint == alone(graph_module)
