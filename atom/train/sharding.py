"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the policy: build, shard, stream full weights back out.

Under ``trainer.strategy=fsdp`` (Lightning's ModelParallelStrategy) only global rank zero holds real weights
between stages; every other rank holds a *skeleton*: the same module tree on the meta device (no memory). A
stage's ``configure_model`` shards the model it was given in place (``shard_from_rank0``: each decoder layer,
then the root), gives the meta ranks real (empty) storage for their shard and broadcasts the values from rank
zero, so host memory per node holds one copy of the model, not one per rank. Weights come back out one
parameter at a time with ``DTensor.full_tensor()`` (``stream_full_weights``): into each rank's unsharded
generation copy after the optimizer steps of a rollout step, and into rank zero's unsharded model at the end
of a stage (``unshard``).
"""

from __future__ import annotations

import copy

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as pure data-parallel FSDP2 (tensor-parallel size 1), which also knows
    how atom shards a policy. Checkpoints are distributed (a directory of per-rank shards)."""

    def __init__(self, reshard_after_forward: bool = True, data_parallel_size: int = 1, timeout=None):
        kwargs = {"timeout": timeout} if timeout is not None else {}  # process-group timeout (a timedelta)
        super().__init__(data_parallel_size=data_parallel_size, tensor_parallel_size=1, **kwargs)
        self.reshard_after_forward = reshard_after_forward  # False = SHARD_GRAD_OP: keep gathered until backward

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The dtype forwards run in (None: the parameters' own)."""
        precision = str(self.precision_plugin.precision)
        return torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None

    def shard(self, model: nn.Module, source: RankZeroState) -> nn.Module:
        """``shard_from_rank0`` over this strategy's data-parallel mesh; all-gathers in the compute dtype."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        dtype = self.compute_dtype
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype is not None else None
        mesh = self.device_mesh["data_parallel"]
        return shard_from_rank0(model, source, self.root_device, mesh, mp, self.reshard_after_forward)


class RankZeroState:
    """Rank zero's weights of a model about to be sharded: its state dict and every buffer (the non-persistent
    ones, such as rotary frequencies, are in no state dict). Empty on the other ranks."""

    def __init__(self, model: nn.Module, rank: int):
        self.state = dict(model.state_dict()) if rank == 0 else {}
        self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()} if rank == 0 else {}


def is_fsdp(strategy) -> bool:
    """True for the FSDP2 strategy atom builds for ``trainer.strategy=fsdp``."""
    return isinstance(strategy, FSDP2Strategy)


def meta_copy(model: nn.Module) -> nn.Module:
    """The same module tree (LoRA, tied weights and flags included) with every tensor on the meta device."""
    memo: dict[int, torch.Tensor] = {}
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in memo:
            meta = t.detach().to("meta")
            memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)  # shared tensors map to one meta tensor, so ties survive


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks to shard one by one: the classes transformers lists in ``_no_split_modules``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"FSDP: found no decoder layers ({sorted(names) or 'no _no_split_modules'}) in {type(base)}")
    return layers


def _shard(model: nn.Module, mesh, mp_policy, reshard_after_forward: bool) -> None:
    from torch.distributed.fsdp import fully_shard

    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    kwargs |= {"mp_policy": mp_policy} if mp_policy is not None else {}
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)


def shard_from_rank0(
    model: nn.Module, source: RankZeroState, device: torch.device, mesh, mp_policy=None, reshard: bool = True
) -> nn.Module:
    """Shard ``model`` in place over ``mesh`` and load rank zero's weights (``source``) into every shard.

    ``model`` is a meta skeleton (or, on rank zero, the real model ``source`` was taken from). Buffers are not
    sharded: rank zero's are broadcast whole. A collective: every rank calls it.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    _shard(model, mesh, mp_policy, reshard)
    model.to_empty(device=device) if _on_meta(model) else model.to(device)
    # A shallow copy: set_model_state_dict replaces the entries of the dict it is given by the local shards.
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, dict(source.state), options=options)
    for name, buffer in model.named_buffers():
        if name in source.buffers:
            buffer.data.copy_(source.buffers[name])  # rank zero's model may be a fresh skeleton (the reference)
        dist.broadcast(buffer.data, src=0)
    return model


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def materialize(skeleton: nn.Module, device: torch.device | str, dtype: torch.dtype | None = None) -> nn.Module:
    """A real, uninitialised copy of ``skeleton`` on ``device``; floating parameters in ``dtype`` when given."""
    model = meta_copy(skeleton)
    if dtype is not None:
        for p in model.parameters():
            if p.is_floating_point():
                p.data = p.data.to(dtype)  # on meta: free; the Parameter object (and any tie) is kept
    first: dict[int, str] = {}
    aliases = {}  # tied parameters (lm_head = embed_tokens): to_empty gives each module its own tensor
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases[name] = first.setdefault(id(p), name)
    model.to_empty(device=device)
    for name, canonical in aliases.items():
        if name != canonical:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, model.get_parameter(canonical))
    return model


@torch.no_grad()
def stream_full_weights(sharded: nn.Module, target: nn.Module | None) -> None:
    """Copy the full weights of ``sharded`` into ``target`` one parameter at a time (``full_tensor()``).

    Peak extra memory is one unsharded parameter. Every rank must call it (each ``full_tensor`` is an
    all-gather); ranks with ``target=None`` take part without keeping anything. Buffers are not sharded and are
    copied as they are.
    """
    params = dict(target.named_parameters()) if target is not None else {}
    for name, p in sharded.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        if target is not None:
            params[name].copy_(full)
        del full
    if target is not None:
        buffers = dict(target.named_buffers())
        for name, b in sharded.named_buffers():
            buffers[name].copy_(b)


def unshard(sharded: nn.Module, skeleton: nn.Module, rank: int) -> nn.Module:
    """After an FSDP stage: rank zero gets an unsharded CPU model with the trained weights, the others a skeleton.

    A collective (every rank calls it); rank zero's host holds one copy of the model plus one parameter.
    """
    target = materialize(skeleton, "cpu") if rank == 0 else None
    stream_full_weights(sharded, target)
    return target if target is not None else meta_copy(skeleton)
