"""The K/V store of FastDrag's consistency-preserving strategy (fastdrag-method.md §4) and the
attention policy that decides what a self-attention layer uses while sampling.

Pure PyTorch; no ComfyUI import. ComfyUI glue (``nodes/patches.py``) calls:

* :meth:`KVStore.capture` from each decoder attn1 layer during inversion, then :meth:`KVStore.freeze`;
* :meth:`KVPolicy.select` from the same layers during sampling, which returns the K and V to use.

Entries are keyed ``(layer, timestep, chunk)``: ``layer`` is any hashable layer id (ComfyUI uses
``("output", block, transformer_index)``), ``timestep`` the integer diffusion timestep of the call,
``chunk`` the cond/uncond chunk of the batch (0 = positive, 1 = negative, ComfyUI's
``cond_or_uncond``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Hashable, Iterable, Optional, Sequence

import torch

__all__ = ["KVSchedule", "KVStore", "KVPolicy", "InjectionStats", "format_bytes", "KV_DEVICE_SHARE",
           "keep_kv_on_device"]

Key = tuple  # (layer, timestep, chunk)


def format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024.0
    return f"{n:.1f} GiB"


# kv_device "auto": the share of the compute device's headroom (free memory above ComfyUI's inference
# reserve, measured with the model loaded) a whole K/V store may take and still stay on the device.
# The store lives in ComfyUI's output cache for as long as the node's output is cached, where model
# management can neither see nor free it, so it must leave most of the headroom to the models and the
# VAE decode that come next: with a quarter, SD1.5 at 512^2 (184 MiB at cfg 1) stays on the device
# wherever 736 MiB of headroom are left; SDXL at 1024^2 (1470 MiB at cfg 1, 2940 MiB at cfg > 1) only
# where 5.7 GiB (11.5 GiB) stay free beside the model (24 GB cards), not on 8-16 GB cards. A store on the CPU costs one host-to-device copy of each
# entry per sampling, the same share of the UNet's time at every size (both scale with the tokens).
KV_DEVICE_SHARE = 0.25


def keep_kv_on_device(store_bytes: int, free_bytes: int, reserve_bytes: int,
                      share: float = KV_DEVICE_SHARE) -> bool:
    """kv_device "auto": True when a store of ``store_bytes`` may stay on the compute device, i.e. takes
    at most ``share`` of the headroom ``free_bytes - reserve_bytes`` (free device memory with the model
    loaded, minus ComfyUI's inference reserve); False = keep it in system memory."""
    if store_bytes < 0 or share < 0:
        raise ValueError(f"store_bytes ({store_bytes}) and share ({share}) must be >= 0")
    return store_bytes <= share * max(0, free_bytes - reserve_bytes)


@dataclass(frozen=True)
class KVSchedule:
    """The schedule a store was captured on; sampling must use the same one.

    Attributes:
        sigmas: descending sampling sigmas, first = the edit sigma, last = the final sigma (0 in
            ComfyUI), e.g. sigma(601), sigma(501), ..., sigma(1), 0 for 10 steps at strength 0.7.
        timesteps: the integer timestep of each sigma but the last (the model calls), descending.
        steps, strength: the user's settings (k = len(timesteps) inversion steps).
        latent_shape: [B, C, H, W] of the latent that was inverted.
    """

    sigmas: tuple[float, ...]
    timesteps: tuple[int, ...]
    steps: int
    strength: float
    latent_shape: tuple[int, ...]

    def __post_init__(self):
        if len(self.sigmas) != len(self.timesteps) + 1:
            raise ValueError(f"{len(self.sigmas)} sigmas for {len(self.timesteps)} timesteps")

    @property
    def edit_timestep(self) -> int:
        return self.timesteps[0]

    def timestep_for(self, sigma: float, rel_tol: float = 1e-3) -> Optional[int]:
        """The timestep whose sigma equals ``sigma`` (relative tolerance), else None."""
        for s, t in zip(self.sigmas, self.timesteps):
            if math.isclose(s, sigma, rel_tol=rel_tol):
                return t
        return None

    def same_as(self, other: "KVSchedule") -> bool:
        return (self.timesteps == other.timesteps and self.latent_shape == other.latent_shape
                and all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)
                        for a, b in zip(self.sigmas, other.sigmas)))

    def describe(self) -> str:
        ts = [int(t) for t in self.timesteps]  # first three and last two of a long schedule (node text stays short)
        shown = ", ".join(map(str, ts)) if len(ts) <= 6 else ", ".join(map(str, ts[:3] + ["..."] + ts[-2:]))
        return f"steps={self.steps} strength={self.strength} timesteps=[{shown}] latent={list(self.latent_shape)}"


class KVStore:
    """attn1 K/V per (layer, timestep, chunk). Writable until :meth:`freeze`, immutable after.

    Tensors are stored detached, in ``dtype`` (half precision by default), on ``device`` (``None`` =
    where they were computed, i.e. the compute device; ``"cpu"`` to save GPU memory). With
    ``device=None`` and a ``fits(nbytes) -> bool`` callable, an entry that does not fit on the compute
    device goes to the CPU instead (``spilled`` counts them).

    With ``device=None`` and a ``placement(projected_bytes) -> (keep: bool, reason: str)`` callable
    (kv_device "auto", :func:`keep_kv_on_device`), the whole store's home is decided once, when the
    first timestep's entries are in (projected size = their bytes x the schedule's timesteps; at
    :meth:`freeze` if the schedule has one timestep): if not ``keep``, those entries move to
    ``spill_device`` and every later entry goes there; ``placement_note`` says where and why.

    ``copy.deepcopy`` returns the object itself: ComfyUI's ``ModelPatcher.clone`` deep-copies the
    patch objects that reference the store, and all clones must share this one store.
    """

    def __init__(self, schedule: Optional[KVSchedule] = None, *, dtype: torch.dtype = torch.float16,
                 device: Optional[torch.device | str] = None, fits=None, spill_device: torch.device | str = "cpu",
                 placement=None):
        self.schedule = schedule
        self.fits = fits
        self.placement = placement
        self.placement_note = ""
        self.moved = 0  # tensors moved to spill_device by the placement decision
        self._first_timestep = None
        self.spill_device = torch.device(spill_device)
        self.spilled = 0
        self.dtype = dtype
        self.device = None if device is None else torch.device(device)
        self._entries: dict[Key, tuple[torch.Tensor, torch.Tensor]] = {}
        self._frozen = False
        self.captures = 0   # capture() calls
        self.writes = 0     # chunk entries stored
        self.repeats = 0    # chunk entries not stored because their key was already there (first write wins)

    # -- building ---------------------------------------------------------------------------
    def capture(self, layer: Hashable, timestep: int, chunks: Sequence[int], k: torch.Tensor,
                v: torch.Tensor) -> int:
        """Store K and V of one attention call, split into its cond/uncond ``chunks``.

        The first write of a key wins: a later call for the same (layer, timestep, chunk), e.g. the
        extra pass that PAG or SAG run at the same sigma after the sampler's own pass, is counted in
        ``repeats`` and not stored.

        Args:
            k, v: [B_total, tokens, channels]; B_total is split evenly into ``len(chunks)`` parts.
        Returns:
            the number of chunks not stored because their key was already there.
        """
        if self._frozen:
            raise RuntimeError("KVStore is frozen (it was already returned by a node); capture into a new one")
        n = len(chunks)
        if n == 0 or k.shape[0] % n or v.shape[0] != k.shape[0]:
            raise ValueError(f"cannot split K {list(k.shape)} / V {list(v.shape)} into chunks {list(chunks)}")
        if self._first_timestep is None:
            self._first_timestep = int(timestep)
        elif int(timestep) != self._first_timestep:
            self._place()
        repeated = 0
        for c, kk, vv in zip(chunks, k.chunk(n), v.chunk(n)):
            key = (layer, int(timestep), int(c))
            if key in self._entries:
                repeated += 1
                continue
            self._entries[key] = (self._keep(kk), self._keep(vv))
            self.writes += 1
        self.repeats += repeated
        self.captures += 1
        return repeated

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        """A detached copy in ``dtype`` on ``device``; with ``device=None``, on the tensor's own device
        unless ``fits(nbytes)`` says no, then on ``spill_device`` (counted in ``spilled``)."""
        dev = t.device if self.device is None else self.device
        if self.device is None and self.fits is not None and dev != self.spill_device:
            if not self.fits(t.numel() * torch.empty((), dtype=self.dtype).element_size()):
                dev = self.spill_device
                self.spilled += 1
        return t.detach().to(device=dev, dtype=self.dtype, copy=True)

    def _place(self) -> None:
        """Decide the store's home once (see the class docstring); a no-op without ``placement``, with a
        fixed ``device`` or once decided."""
        if self.placement is None or self.device is not None:
            return
        placement, self.placement = self.placement, None
        steps = len(self.schedule.timesteps) if self.schedule is not None else 1
        seen = max(1, len({k[1] for k in self._entries}))
        projected = self.nbytes * steps // seen
        keep, reason = placement(projected)
        self.placement_note = reason
        if keep:
            return
        self.device = self.spill_device
        entries = {}
        for key, kv in self._entries.items():
            self.moved += sum(t.device != self.spill_device for t in kv)
            entries[key] = tuple(t.to(self.spill_device) for t in kv)
        self._entries = entries

    def freeze(self, schedule: Optional[KVSchedule] = None) -> "KVStore":
        if schedule is not None:
            self.schedule = schedule
        if not self._frozen:
            self._place()
        self._entries = MappingProxyType(dict(self._entries))  # type: ignore[assignment]
        self._frozen = True
        self.fits = self.placement = None
        return self

    # -- reading ----------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        return self._frozen

    def get(self, layer: Hashable, timestep: int, chunk: int) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        return self._entries.get((layer, int(timestep), int(chunk)))

    def keys(self) -> Iterable[Key]:
        return self._entries.keys()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    @property
    def layers(self) -> list:
        return sorted({k[0] for k in self._entries}, key=repr)

    @property
    def timesteps(self) -> list[int]:
        return sorted({k[1] for k in self._entries}, reverse=True)

    @property
    def chunks(self) -> list[int]:
        return sorted({k[2] for k in self._entries})

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self._entries.values() for t in kv)

    def devices(self) -> set[str]:
        return {str(t.device) for kv in self._entries.values() for t in kv}

    def to(self, device: torch.device | str) -> "KVStore":
        """A frozen copy with every tensor on ``device`` (self if already there)."""
        device = torch.device(device)
        if all(t.device == device for kv in self._entries.values() for t in kv):
            return self
        out = KVStore(self.schedule, dtype=self.dtype, device=device)
        out._entries = {k: (a.to(device), b.to(device)) for k, (a, b) in self._entries.items()}
        out.captures, out.writes, out.repeats = self.captures, self.writes, self.repeats
        return out.freeze()

    def describe(self) -> str:
        sched = self.schedule.describe() if self.schedule else "no schedule"
        return (f"{len(self)} K/V entries = {len(self.layers)} layers x {len(self.timesteps)} timesteps x "
                f"{len(self.chunks)} chunks, {format_bytes(self.nbytes)} {str(self.dtype).replace('torch.', '')} "
                f"on {','.join(sorted(self.devices())) or '-'}"
                + (f" ({self.spilled} tensors spilled to {self.spill_device})" if self.spilled else "")
                + (f" ({self.placement_note})" if self.placement_note else "") + f"; {sched}")

    def __repr__(self):
        return f"KVStore({self.describe()})"

    def __deepcopy__(self, memo):
        return self


@dataclass
class InjectionStats:
    """Counts of one sampling run (mutable; belongs to the run, not to the store)."""

    calls: int = 0          # attention calls that asked the policy
    hits: int = 0           # chunk replacements with the exact (layer, t, chunk) entry
    fallbacks: int = 0      # uncond chunk replaced with the cond entry (store captured at cfg 1)
    misses: int = 0         # chunks left with their own K/V because nothing was stored
    off: int = 0            # calls where the policy did not inject (consistency off, other step)
    missed_keys: list = field(default_factory=list)

    def describe(self) -> str:
        s = f"K/V injection: {self.hits} hits, {self.fallbacks} uncond->cond fallbacks, {self.misses} misses"
        if self.off:
            s += f", {self.off} calls not injected"
        return s

    def __deepcopy__(self, memo):
        return self


def lookup(store: KVStore, layer: Hashable, step, chunk: int, stats: InjectionStats,
           uncond_fallback: bool = True):
    """The stored (K, V) for one chunk of one attention call, counted in ``stats``: the exact
    (layer, step, chunk) entry (a hit); else, for the uncond chunk of a store captured at cfg 1 and
    with ``uncond_fallback``, the cond entry (a fallback, as the official code shares one K/V for every
    batch entry); else None (a miss, its key recorded)."""
    hit = store.get(layer, step, chunk)
    if hit is not None:
        stats.hits += 1
    elif uncond_fallback and chunk != 0 and store.get(layer, step, 0) is not None:
        hit = store.get(layer, step, 0)
        stats.fallbacks += 1
    if hit is None:
        stats.misses += 1
        stats.missed_keys.append((layer, step, chunk))
    return hit


@dataclass(frozen=True)
class KVPolicy:
    """Which layers and steps get their K/V replaced while sampling, and how.

    The official strategy (fastdrag-method.md §4) is ``KVPolicy()``: every captured decoder layer, at
    every sampling step, K and V both replaced by the stored ones of the same timestep; queries keep
    coming from the current features; nothing is masked or concatenated.

    Attributes:
        enabled: False = no injection (the "consistency off" ablation).
        layers: restrict to these layer ids (None = every layer in the store).
        timesteps: restrict to these timesteps (None = all).
        uncond_fallback: when the store has no entry for the uncond chunk (captured at cfg = 1), use
            the cond entry, as the official code shares one K/V for every batch entry.
    """

    enabled: bool = True
    layers: Optional[frozenset] = None
    timesteps: Optional[frozenset] = None
    uncond_fallback: bool = True

    def select(self, store: KVStore, layer: Hashable, timestep: Optional[int], chunks: Sequence[int],
               k: torch.Tensor, v: torch.Tensor, stats: Optional[InjectionStats] = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V to use for one attention call of ``layer``.

        Args:
            k, v: the call's own projections [B_total, tokens, channels], B_total split evenly into
                ``chunks``. The result has the same shape, device and dtype.
        """
        stats = stats if stats is not None else InjectionStats()
        stats.calls += 1
        if (not self.enabled or timestep is None
                or (self.layers is not None and layer not in self.layers)
                or (self.timesteps is not None and timestep not in self.timesteps)):
            stats.off += 1
            return k, v
        n = len(chunks)
        ks, vs = [], []
        for c, kk, vv in zip(chunks, k.chunk(n), v.chunk(n)):
            hit = lookup(store, layer, timestep, c, stats, self.uncond_fallback)
            if hit is None:
                ks.append(kk)
                vs.append(vv)
                continue
            sk, sv = hit
            if sk.shape[1:] != kk.shape[1:]:
                raise ValueError(f"stored K/V of layer {layer} at t={timestep} has shape {list(sk.shape)}, "
                                 f"the sampled latent gives {list(kk.shape)}: K/V from another resolution")
            if sk.shape[0] != kk.shape[0]:
                if sk.shape[0] != 1:
                    raise ValueError(f"stored K/V batch {sk.shape[0]} != sampled batch {kk.shape[0]} "
                                     f"(layer {layer}, t={timestep})")
                sk, sv = sk.expand_as(kk), sv.expand_as(vv)
            ks.append(sk.to(device=kk.device, dtype=kk.dtype))
            vs.append(sv.to(device=vv.device, dtype=vv.dtype))
        return torch.cat(ks), torch.cat(vs)
