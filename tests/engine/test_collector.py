"""A run spares the garbage collector the caller's objects, and leaves its settings as it found them."""

from __future__ import annotations

import gc

import pytest

from pipeline.collector import settle, spared


@pytest.fixture
def collector_settings():
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    yield thresholds
    gc.set_threshold(*thresholds)
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_inside_the_block_old_objects_are_frozen_and_collections_are_rarer(collector_settings):
    gc.set_threshold(700, 10, 10)
    existing = [object() for _ in range(10)]
    with spared():
        assert gc.get_freeze_count() >= len(existing)
        young, middle, old = gc.get_threshold()
        assert young > 700 and middle > 10 and old > 10
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (700, 10, 10)


def test_settings_come_back_when_the_block_raises(collector_settings):
    gc.set_threshold(500, 7, 3)
    with pytest.raises(RuntimeError), spared():
        raise RuntimeError("stage failed")
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (500, 7, 3)


def test_a_caller_who_disabled_the_collector_is_left_alone(collector_settings):
    gc.disable()
    gc.set_threshold(900, 10, 10)
    with spared():
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == (900, 10, 10)
    assert not gc.isenabled()


def test_a_higher_threshold_of_the_caller_is_kept(collector_settings):
    gc.set_threshold(1_000_000, 10, 10)
    with spared():
        assert gc.get_threshold()[0] == 1_000_000


def test_what_survives_a_stage_boundary_is_frozen_and_handed_back_unwalked(collector_settings):
    gc.set_threshold(700, 10, 10)
    with spared():
        before = gc.get_freeze_count()
        kept = [[index] for index in range(5000)]
        settle()
        assert gc.get_freeze_count() >= before + len(kept)
        assert gc.get_count()[0] < 100
    assert gc.get_freeze_count() == 0
    assert gc.get_count()[0] < 100, "the run's survivors would be walked by the next young collection"


def test_cycles_left_by_a_run_are_still_collected_afterwards(collector_settings):
    class Cycle:
        pass

    with spared():
        knot = Cycle()
        knot.me = knot
        del knot
        settle()
    assert gc.collect() >= 1


def test_a_nested_block_leaves_the_outer_one_in_charge(collector_settings):
    gc.set_threshold(700, 10, 10)
    with spared():
        outer = gc.get_threshold()
        with spared():
            pass
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == outer
    assert gc.get_threshold() == (700, 10, 10)


def test_settle_outside_a_run_leaves_the_collector_alone(collector_settings):
    settle()
    assert gc.get_freeze_count() == 0
