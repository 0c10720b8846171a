import numpy as np
import pytest
import tierlm
from hypothesis import given, settings
from hypothesis import strategies as st
from tierlm.sparse.cache import NeuronCache, NeuronWindow


def row_of(n, elems):
    return np.arange(elems, dtype=np.float32) + 1000.0 * n


def check(cache, ref):
    assert len(cache) == len(ref)
    neurons = cache.neurons()
    assert sorted(neurons.tolist()) == sorted(ref)
    rows = cache.rows()
    for slot, n in enumerate(neurons):
        assert cache.slot_of(n) == slot
        np.testing.assert_array_equal(rows[slot], row_of(n, cache.row_elems))
    for n in range(cache.n_neurons):
        assert (n in cache) == (n in ref)


ops = st.lists(
    st.tuples(st.booleans(), st.lists(st.integers(0, 40), min_size=1, max_size=9)),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops, capacity=st.integers(1, 41), elems=st.sampled_from([1, 7, 1024, 1025]))
def test_insert_erase_sequences_match_a_reference_set(ops, capacity, elems):
    tier = tierlm.HostTier("64MiB")
    cache = NeuronCache(tier, 41, capacity, elems)
    ref = set()
    for insert, ids in ops:
        ids = list(dict.fromkeys(ids))  # unique, order kept
        if insert:
            fresh = [n for n in ids if n not in ref][: capacity - len(ref)]
            cache.insert(
                fresh,
                np.stack([row_of(n, elems) for n in fresh])
                if fresh
                else np.zeros((0, elems), np.float32),
            )
            ref.update(fresh)
        else:
            gone = [n for n in ids if n in ref]
            cache.erase(gone)
            ref.difference_update(gone)
        check(cache, ref)


def test_failed_calls_change_nothing_and_capacity_is_a_budget_error():
    tier = tierlm.HostTier("1MiB")
    cache = NeuronCache(tier, 10, 3, 4)
    rows = np.ones((4, 4), np.float32)
    with pytest.raises(tierlm.BudgetError, match="capacity of 3"):
        cache.insert([1, 2, 3, 4], rows)
    with pytest.raises(tierlm.InvalidArgumentError, match="already cached|out of range|0 .. 9"):
        cache.insert([1, 10], rows[:2])
    assert len(cache) == 0 and 1 not in cache
    cache.insert([1, 2], rows[:2])
    with pytest.raises(tierlm.InvalidArgumentError, match="not cached"):
        cache.erase([2, 5])
    assert len(cache) == 2 and 2 in cache
    with pytest.raises(tierlm.InvalidArgumentError, match="4 elements each|expected 4"):
        cache.insert([3], np.ones((1, 5), np.float32))


def test_cache_memory_is_charged_to_the_tier_budget():
    tier = tierlm.HostTier(3 * 4096)
    cache = NeuronCache(tier, 100, 100, 20)  # 8000 B of rows + 800 B of maps: 3 pages
    assert tier.stats()["current"] == 3 * 4096
    with pytest.raises(tierlm.BudgetError, match="host tier"):
        NeuronCache(tier, 10, 1, 1)
    del cache
    assert tier.stats()["current"] == 0
    with pytest.raises(tierlm.BudgetError, match="raise the host budget"):
        NeuronCache(tierlm.HostTier(4096), 100, 100, 20)


def test_f16_rows_round_trip():
    tier = tierlm.HostTier("1MiB")
    cache = NeuronCache(tier, 9, 5, 6, dtype="f16")
    rows = np.arange(12, dtype=np.float16).reshape(2, 6)
    cache.insert([8, 0], rows)
    np.testing.assert_array_equal(cache.rows(), rows)
    assert cache.row_bytes == 12


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 6),
    tokens=st.lists(st.lists(st.integers(0, 30), max_size=12), min_size=1, max_size=25),
)
def test_window_holds_the_union_of_the_last_k_tokens(k, tokens):
    window = NeuronWindow(31, k)
    held = set()
    for t, active in enumerate(tokens):
        load, evict = window.step(active)
        assert len(set(load.tolist())) == len(load) and not held.intersection(load.tolist())
        assert held.issuperset(evict.tolist())
        held.difference_update(evict.tolist())
        held.update(load.tolist())
        want = set().union(*[set(a) for a in tokens[max(0, t - k + 1) : t + 1]])
        assert held == want
        assert len(window) == len(want)
    window.reset()
    assert len(window) == 0 and window.tokens == 0


def test_window_rejects_out_of_range_ids():
    with pytest.raises(tierlm.InvalidArgumentError, match="out of range"):
        NeuronWindow(5).step([5])
