"""Each run's random draws in a stack: dropout masks for its own rows of the stacked batch, drawn
from its own random stream exactly as its lone run draws them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from xmodal_ft.engine.run import RandomStream


class RunDraws:
    """The dropout masks of R runs whose batches are stacked run-major (`streams[r]`: run r's
    random stream). `track(model)` follows each batch's per-run padding."""

    def __init__(self, streams: Sequence[RandomStream]):
        self.streams = list(streams)
        self.runs = len(self.streams)
        self.pads: list[int] = [0] * self.runs  # each run's padding in this batch's sequences
        self._pool: ThreadPoolExecutor | None = None  # draws masks beside this thread

    def track(self, model: nn.Module) -> None:
        """Read each run's padding from every batch `model` runs (arguments `x, lengths`)."""
        model.register_forward_pre_hook(self._enter)

    def _enter(self, module: nn.Module, args: tuple) -> None:
        x, lengths = args[0], args[1] if len(args) > 1 else None
        self.pads = [0] * self.runs
        if lengths is not None and module.training:  # only dropout masks depend on pads
            widths = lengths.view(self.runs, -1).amax(dim=1)
            self.pads = (x.shape[1] - widths).tolist()  # each run's batch was trimmed to its width

    def keep_masks(
        self, x: torch.Tensor, keep: float, sequence_dims: tuple[int, ...] = ()
    ) -> torch.Tensor:
        """Each run's Bernoulli(`keep`) mask of its rows of `x`, drawn from its own generator as
        its lone run's dropout draws it (`empty_like(input).bernoulli_(keep)`), run-major as the
        rows. A run whose batch was padded to the group's longest sequence draws the mask of its
        own width (dims `sequence_dims` of `x`, less its pad) and gets zeros over the pad.

        On the CPU, where a draw is one serial loop, the runs' draws are split among threads:
        each run's mask comes from its own generator, so every split gives the same masks."""
        shape = (x.shape[0] // self.runs, *x.shape[1:])
        padded = sequence_dims if any(self.pads) else ()
        fill = torch.zeros if padded else torch.empty
        masks = fill((self.runs, *shape), dtype=x.dtype, device=x.device)

        def draw(runs: range) -> None:
            for run in runs:
                self._draw(masks[run], keep, run, padded)

        self._split(draw, threads=1 if x.device.type == "cuda" else torch.get_num_threads())
        return masks.view(x.shape)

    def _draw(self, mask: torch.Tensor, keep: float, run: int, sequence_dims: tuple[int, ...]):
        generator = self.streams[run].generator(mask.device)
        pad = self.pads[run]
        if not pad or not sequence_dims:
            mask.bernoulli_(keep, generator=generator)
            return
        own = [n - pad if d in sequence_dims else n for d, n in enumerate(mask.shape)]
        drawn = torch.empty(own, dtype=mask.dtype, device=mask.device)
        mask[tuple(slice(n) for n in own)] = drawn.bernoulli_(keep, generator=generator)

    def _split(self, work: Callable[[range], None], threads: int) -> None:
        """`work(runs)` over every run, the runs cut into `threads` contiguous parts done at
        once (torch releases the GIL in its kernels); the first part in this thread."""
        parts = min(threads, self.runs)
        cuts = [self.runs * i // parts for i in range(parts + 1)]
        if parts > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=parts - 1)
        bounds = zip(cuts[1:-1], cuts[2:], strict=True)
        futures = [self._pool.submit(work, range(a, b)) for a, b in bounds]
        work(range(cuts[0], cuts[1]))
        for future in futures:
            future.result()

    def close(self) -> None:
        """Stop the threads that draw masks (a sweep builds many stacks)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
