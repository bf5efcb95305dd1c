"""fastdrag_core.kv: the K/V store and the attention policy."""

import copy

import pytest
import torch

CUDA = torch.device("cuda")  # the CUDA-only tests' device

from fastdrag_core.kv import KV_DEVICE_SHARE, InjectionStats, KVPolicy, KVSchedule, KVStore, keep_kv_on_device

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
        s.capture("L", t, [0], k.to(CUDA), v.to(CUDA))
    s.freeze()
    assert s.spilled == 3 and s.devices() == {"cpu", "cuda:0"} and "spilled to cpu" in s.describe()


MiB, GiB = 2 ** 20, 2 ** 30


def test_auto_keeps_small_stores_on_the_device_and_large_ones_off():
    """kv_device auto, hand-worked with the store sizes derived from the real layer shapes (README: 184 MiB
    for SD1.5 at 512^2, 1470 MiB for SDXL at 1024^2, cfg 1) and a 1 GiB inference reserve: a store may take a
    quarter of the headroom free - reserve."""
    assert KV_DEVICE_SHARE == 0.25
    sd15, sdxl = 184 * MiB, 1470 * MiB
    assert keep_kv_on_device(sd15, free_bytes=8 * GiB, reserve_bytes=1 * GiB)       # 184 MiB <= 1.75 GiB
    assert keep_kv_on_device(sd15, free_bytes=int(1.75 * GiB), reserve_bytes=1 * GiB)  # <= 192 MiB
    assert not keep_kv_on_device(sd15, free_bytes=int(1.7 * GiB), reserve_bytes=1 * GiB)  # > 179 MiB
    assert not keep_kv_on_device(sdxl, free_bytes=6 * GiB, reserve_bytes=1 * GiB)   # 12 GB card: > 1.25 GiB
    assert keep_kv_on_device(sdxl, free_bytes=14 * GiB, reserve_bytes=1 * GiB)      # 24 GB card: <= 3.25 GiB
    assert not keep_kv_on_device(1, free_bytes=GiB // 2, reserve_bytes=GiB)         # free below the reserve
    assert keep_kv_on_device(0, free_bytes=0, reserve_bytes=GiB)
    assert keep_kv_on_device(100, free_bytes=100, reserve_bytes=0, share=1.0)
    with pytest.raises(ValueError):
        keep_kv_on_device(-1, free_bytes=GiB, reserve_bytes=0)


def placed_store(keep, spill_device, steps=SCHED, first=(101,), dtype=torch.float16):
    """A store with a recording placement; captures both layers at each timestep of ``first``."""
    asked = []

    def placement(projected):
        asked.append(projected)
        return keep, f"decided on {projected} bytes"

    s = KVStore(steps, dtype=dtype, placement=placement, spill_device=spill_device)
    for t in first:
        for layer in LAYERS:
            s.capture(layer, t, [0], *kv())
    return s, asked


def test_auto_decides_once_after_the_first_timestep_and_moves_the_store():
    """The spill path without a GPU: the compute tensors are on the CPU, the spill target is the meta
    device. The decision waits for the first timestep's entries (2 layers x K, V of [1, 16, 8] fp16 =
    1024 bytes), projects them over the schedule's 3 timesteps, moves what is there and sends every
    later entry to the target; the node's text says where and why."""
    s, asked = placed_store(False, "meta")
    assert asked == [] and s.devices() == {"cpu"}
    s.capture(LAYERS[0], 201, [0], *kv())
    assert asked == [3 * 1024] and s.moved == 4 and s.devices() == {"meta"}
    s.capture(LAYERS[1], 201, [0], *kv())
    s.capture(LAYERS[0], 301, [0], *kv())
    s.freeze()
    assert asked == [3 * 1024] and s.devices() == {"meta"} and len(s) == 5 and s.spilled == 0
    assert s.placement is None and "(decided on 3072 bytes)" in s.describe() and "on meta" in s.describe()


def test_auto_keeping_the_store_moves_nothing():
    s, asked = placed_store(True, "meta", first=(101, 201, 301))
    s.freeze()
    assert asked == [3 * 1024] and s.moved == 0 and s.devices() == {"cpu"} and len(s) == 6
    assert "(decided on 3072 bytes)" in s.describe()


def test_auto_with_one_timestep_decides_at_freeze():
    one = KVSchedule(sigmas=(3.0, 0.0), timesteps=(301,), steps=1, strength=1.0, latent_shape=(1, 4, 8, 8))
    s, asked = placed_store(False, "meta", steps=one, first=(301,))
    assert asked == []
    s.freeze()
    assert asked == [1024] and s.devices() == {"meta"} and s.moved == 4


def test_a_fixed_device_is_never_placed():
    asked = []
    s = KVStore(SCHED, device="cpu", placement=lambda n: asked.append(n) or (False, "x"), spill_device="meta")
    for t in SCHED.timesteps:
        s.capture(LAYERS[0], t, [0], *kv())
    s.freeze()
    assert asked == [] and s.devices() == {"cpu"} and "(x)" not in s.describe()


def test_a_moved_store_injects_the_captured_values():
    """The move and injection path with values, on the CPU: the store holds fp16 copies, the placement
    says system memory (spill target cpu: the move runs, here without changing the device), and the
    policy hands the layers float32 K/V equal to the captured ones rounded to fp16."""
    s = KVStore(SCHED, placement=lambda n: (False, "off the device"))
    captured = {}
    for t in SCHED.timesteps:
        for layer in LAYERS:
            k, v = kv()
            captured[layer, t] = (k, v)
            s.capture(layer, t, [0], k, v)
    s.freeze()
    assert s.devices() == {"cpu"} and s.device == torch.device("cpu") and "(off the device)" in s.describe()
    stats = InjectionStats()
    for (layer, t), (k, v) in captured.items():
        own = torch.zeros(2, 16, 8, dtype=torch.float32)  # cond + uncond of the sampling batch
        k2, v2 = KVPolicy().select(s, layer, t, [0, 1], own, own, stats)
        assert k2.dtype == torch.float32 and k2.shape == own.shape
        assert torch.equal(k2, k.half().float().expand(2, -1, -1)) and torch.equal(v2, v.half().float().expand(2, -1, -1))
    assert (stats.hits, stats.fallbacks, stats.misses) == (6, 6, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the auto move: cuda -> cpu)")
def test_auto_moves_a_large_store_from_cuda_to_cpu():
    s = KVStore(SCHED, placement=lambda n: (False, "too large"))
    for t in SCHED.timesteps:
        k, v = kv()
        s.capture(LAYERS[0], t, [0], k.to(CUDA), v.to(CUDA))
    s.freeze()
    assert s.devices() == {"cpu"} and s.moved == 2
    k2, _ = KVPolicy().select(s, LAYERS[0], 201, [0], torch.zeros(1, 16, 8, device="cuda"),
                              torch.zeros(1, 16, 8, device="cuda"))
    assert k2.device.type == "cuda"


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
