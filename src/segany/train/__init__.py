"""Training SAM: the interactive simulation of the paper (Appendix A) on any SAM-layout model.

Single process (CPU or one GPU)::

    segany train recipes/tiny_smoke.toml --output runs/tiny_smoke

Several processes on one machine (gloo on CPU, NCCL on GPUs); the recipe's ``loop.global_batch``
is kept whatever the number of processes (per-process batch = global / N, plus gradient
accumulation when ``loop.micro_batch`` is smaller)::

    torchrun --standalone --nproc_per_node 2 -m segany.cli.main train recipes/tiny_smoke.toml --output runs/tiny_smoke

Resume an interrupted run from ``OUTPUT/checkpoint.pt`` (model, optimiser, scheduler, step, RNG)::

    segany train recipes/tiny_smoke.toml --output runs/tiny_smoke --resume

Fine-tune an official checkpoint (layer-wise lr decay, drop path, optional frozen encoder)::

    segany train recipes/finetune_vit_b.toml model.init=sam_vit_b_01ec64.pth --output runs/ft

Overrides are ``SECTION.KEY=VALUE`` (TOML values): ``loop.steps=100 optim.lr=1e-4 loop.bf16=true``.
Outputs: ``checkpoint.pt``, ``model.safetensors`` / ``model.pth`` (official key layout, loadable by
``segany.load_model`` and by ``segment_anything``'s ``sam_model_registry[...]``), ``metrics.csv``,
``loss.png``, ``config.json``.

Modules: :mod:`~segany.train.config` (recipes), :mod:`~segany.train.data` (cached, resized data),
:mod:`~segany.train.engine` (the interactive rounds), :mod:`~segany.train.losses`,
:mod:`~segany.train.optim`, :mod:`~segany.train.distributed`, :mod:`~segany.train.state`
(checkpoints), :mod:`~segany.train.logs`, :mod:`~segany.train.loop` (``train``).
"""

from __future__ import annotations

__all__ = ["TrainConfig", "load_config", "train"]


def __getattr__(name: str):  # lazy: keep ``import segany.train`` light
    if name in ("TrainConfig", "load_config"):
        from segany.train import config

        return getattr(config, name)
    if name == "train":
        from segany.train.loop import train

        return train
    raise AttributeError(name)
