"""How many runs of a model fit in memory at once (`max_runs`)."""

from __future__ import annotations

import torch
from torch import nn

from xmodal_ft.variants import count_parameters

MAX_RUNS = 64  # beyond this, a CPU step is compute-bound anyway and a GPU batch large
ACTIVATION_FLOATS = 24  # floats kept for backward per token, layer and hidden unit (rough)
ATTENTION_FLOATS = 4  # per query-key pair, head and layer on SDPA's math path (scores, probs,…)
ATTENTION_DROPOUT = ("attn_pdrop", "attention_probs_dropout_prob", "attention_dropout")


def max_runs(
    model: nn.Module,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    frozen_shared: bool,
    memory_share: float = 1.0,
) -> int:
    """How many runs of `model` fit in half the free memory of `device` (of this process's
    `memory_share` of it, where workers share the device's memory), at most `MAX_RUNS`.

    A run costs its trainable parameters four times (weights, gradients, two Adam moments), its
    frozen parameters once unless `frozen_shared` (pretrained; random ones are counted per run,
    an upper bound as runs of one seed share them), and its activations: batch · tokens · hidden
    · layers · ACTIVATION_FLOATS. With attention dropout, attention takes SDPA's math path in
    lockstep, which keeps L² probabilities: batch · heads · tokens² · layers · ATTENTION_FLOATS.
    """
    config = model.backbone.config
    counts = count_parameters(model)
    trainable, frozen = counts["trainable"], counts["total"] - counts["trainable"]
    layers = config.num_hidden_layers
    activations = ACTIVATION_FLOATS * batch_size * seq_len * config.hidden_size * layers
    if any(getattr(config, key, 0) for key in ATTENTION_DROPOUT):
        heads = config.num_attention_heads
        activations += ATTENTION_FLOATS * batch_size * heads * seq_len**2 * layers
    per_run = 4 * (4 * trainable + (0 if frozen_shared else frozen) + activations)
    free = memory_share * _free_memory(device)
    return max(1, min(MAX_RUNS, int(0.5 * free // per_run)))


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":  # the driver's free memory and the blocks torch caches unused
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    try:
        with open("/proc/meminfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30  # unknown: assume 8 GiB
