"""fastdrag_core.kv: the K/V store and the attention policy."""

import copy

import pytest
import torch

from fastdrag_core.kv import InjectionStats, KVPolicy, KVSchedule, KVStore

SCHED = KVSchedule(sigmas=(3.0, 2.0, 1.0, 0.0), timesteps=(301, 201, 101), steps=4, strength=0.75,
                   latent_shape=(1, 4, 8, 8))
LAYERS = [("output", 1, 0), ("output", 2, 0)]


def kv(b=1, tokens=16, ch=8, fill=None):
    k = torch.randn(b, tokens, ch) if fill is None else torch.full((b, tokens, ch), float(fill))
    return k, k + 1


def full_store(chunks=(0,), device=None):
    s = KVStore(device=device)
    for layer in LAYERS:
        for t in SCHED.timesteps:
            k, v = kv(b=len(chunks))
            s.capture(layer, t, chunks, k, v)
    return s.freeze(SCHED)


def test_counts_and_size():
    s = full_store(chunks=(0, 1))
    assert len(s) == len(LAYERS) * 3 * 2
    assert s.layers == sorted(LAYERS, key=repr) and s.timesteps == [301, 201, 101] and s.chunks == [0, 1]
    assert s.nbytes == len(s) * 2 * 16 * 8 * 2  # fp16: 2 bytes
    assert all(a.dtype == torch.float16 for key in s.keys() for a in s.get(*key))
    assert "12 K/V entries = 2 layers x 3 timesteps x 2 chunks" in s.describe()


def test_chunks_are_split_in_order():
    s = KVStore()
    k = torch.cat([torch.zeros(1, 4, 2), torch.ones(1, 4, 2)])
    s.capture("L", 5, [1, 0], k, k)
    assert s.get("L", 5, 1)[0].eq(0).all() and s.get("L", 5, 0)[0].eq(1).all()


def test_frozen_store_is_immutable_and_shared_by_deepcopy():
    s = full_store()
    with pytest.raises(RuntimeError):
        s.capture("L", 1, [0], *kv())
    assert copy.deepcopy(s) is s
    with pytest.raises(TypeError):
        s._entries[("x", 1, 0)] = kv()


def test_stored_copy_is_detached_from_the_source():
    s = KVStore(dtype=torch.float32)
    k, v = kv()
    s.capture("L", 1, [0], k, v)
    k.add_(100)
    assert not torch.equal(s.get("L", 1, 0)[0], k)


def test_device_option_and_to():
    s = full_store(device="cpu")
    assert s.devices() == {"cpu"}
    assert s.to("cpu") is s


def test_policy_replaces_with_the_same_timestep_entry():
    s = full_store()
    stats = InjectionStats()
    k, v = kv(fill=7)
    nk, nv = KVPolicy().select(s, LAYERS[0], 201, [0], k, v, stats)
    sk, sv = s.get(LAYERS[0], 201, 0)
    assert torch.equal(nk, sk.float()) and torch.equal(nv, sv.float())
    assert nk.dtype == k.dtype and stats.hits == 1 and stats.misses == 0


def test_policy_disabled_keeps_own_kv():
    s = full_store()
    k, v = kv()
    stats = InjectionStats()
    nk, nv = KVPolicy(enabled=False).select(s, LAYERS[0], 201, [0], k, v, stats)
    assert nk is k and nv is v and stats.off == 1


def test_uncond_falls_back_to_cond_and_counts_it():
    s = full_store(chunks=(0,))
    k, v = kv(b=2)
    stats = InjectionStats()
    nk, _ = KVPolicy().select(s, LAYERS[1], 101, [0, 1], k, v, stats)
    assert torch.equal(nk[0], nk[1]) and stats.hits == 1 and stats.fallbacks == 1
    stats = InjectionStats()
    KVPolicy(uncond_fallback=False).select(s, LAYERS[1], 101, [0, 1], k, v, stats)
    assert stats.misses == 1 and stats.missed_keys == [(LAYERS[1], 101, 1)]


def test_missing_timestep_is_a_counted_miss():
    s = full_store()
    k, v = kv()
    stats = InjectionStats()
    nk, _ = KVPolicy().select(s, LAYERS[0], 999, [0], k, v, stats)
    assert nk is not None and stats.misses == 1


def test_other_resolution_is_an_error():
    s = full_store()
    k, v = kv(tokens=64)
    with pytest.raises(ValueError, match="another resolution"):
        KVPolicy().select(s, LAYERS[0], 201, [0], k, v)


def test_batch_one_entry_is_shared_by_a_batch():
    s = full_store()
    k, v = kv(b=2)
    nk, _ = KVPolicy().select(s, LAYERS[0], 201, [0], k, v)
    assert nk.shape == k.shape and torch.equal(nk[0], nk[1])


def test_schedule_lookup_and_comparison():
    assert SCHED.timestep_for(2.0) == 201 and SCHED.timestep_for(2.0005) == 201
    assert SCHED.timestep_for(0.0) is None and SCHED.timestep_for(5.0) is None
    assert SCHED.edit_timestep == 301
    other = KVSchedule(sigmas=(3.0, 2.0, 1.0, 0.0), timesteps=(301, 201, 101), steps=4, strength=0.75,
                       latent_shape=(1, 4, 16, 16))
    assert SCHED.same_as(SCHED) and not SCHED.same_as(other)
    with pytest.raises(ValueError):
        KVSchedule(sigmas=(1.0,), timesteps=(1,), steps=1, strength=1.0, latent_shape=(1, 4, 8, 8))


def test_entries_that_do_not_fit_spill():
    """The spill rule, exercised without a GPU: tensors live on the CPU here, so the spill target is the
    meta device; on a GPU machine the compute device is cuda and the target is the CPU (below)."""
    budget = {"left": 16 * 8 * 2 * 3}  # room for three fp16 [1, 16, 8] tensors

    def fits(n):
        if n <= budget["left"]:
            budget["left"] -= n
            return True
        return False

    s = KVStore(fits=fits, spill_device="meta")
    for t in (1, 2, 3):
        s.capture("L", t, [0], *kv())
    s.freeze()
    assert s.spilled == 3 and s.devices() == {"cpu", "meta"}
    placed = [tuple(a.device.type for a in s.get("L", t, 0)) for t in (1, 2, 3)]  # (K, V) per entry, in order
    assert placed == [("cpu", "cpu"), ("cpu", "meta"), ("meta", "meta")]
    assert s.fits is None and "(3 tensors spilled to meta)" in s.describe()


def test_nothing_spills_when_the_device_is_the_spill_target_or_fixed():
    s = KVStore(fits=lambda n: False)  # CPU tensors, CPU spill target: already there
    s.capture("L", 1, [0], *kv())
    assert s.spilled == 0 and s.devices() == {"cpu"}
    s = KVStore(device="cpu", fits=lambda n: False, spill_device="meta")  # a fixed device never spills
    s.capture("L", 1, [0], *kv())
    assert s.spilled == 0 and s.devices() == {"cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the default spill: cuda -> cpu)")
def test_entries_that_do_not_fit_spill_to_cpu_from_cuda():
    budget = {"left": 16 * 8 * 2 * 3}

    def fits(n):
        if n <= budget["left"]:
            budget["left"] -= n
            return True
        return False

    s = KVStore(fits=fits)
    for t in (1, 2, 3):
        k, v = kv()
        s.capture("L", t, [0], k.cuda(), v.cuda())
    s.freeze()
    assert s.spilled == 3 and s.devices() == {"cpu", "cuda:0"} and "spilled to cpu" in s.describe()


def test_first_write_wins_and_repeats_are_counted():
    """A second pass at the same sigma (PAG, SAG) writes the same keys again: not stored, counted."""
    s = KVStore(dtype=torch.float32)
    main_k, main_v = kv(b=2, fill=1)
    extra_k, extra_v = kv(b=1, fill=9)
    assert s.capture("L", 5, [0, 1], main_k, main_v) == 0
    assert s.capture("L", 5, [0], extra_k, extra_v) == 1  # the perturbed cond pass
    assert s.capture("L", 5, [1], extra_k, extra_v) == 1  # the degraded uncond pass
    assert s.get("L", 5, 0)[0].eq(1).all() and s.get("L", 5, 1)[0].eq(1).all()
    assert (len(s), s.writes, s.repeats, s.captures) == (2, 2, 2, 3)
    assert s.capture("L", 6, [0], extra_k, extra_v) == 0  # a new key from a later pass is stored
    assert (len(s), s.writes, s.repeats) == (3, 3, 2)
    c = s.freeze().to("meta")
    assert (c.writes, c.repeats, c.captures) == (3, 2, 4)
