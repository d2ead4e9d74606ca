"""Lockstep: R runs of one configuration trained as one model, each exactly as alone.

- `grouping`: which runs of a sweep can train together (they differ only in lr and seed);
- `stack`: `Stacked`, the carrier model of R runs (trainable layers stacked per run, frozen
  ones shared) and its clipping and optimizer step;
- `sharing`: frozen weights stored once; how many blocks of values a module needs;
- `draws`: each run's dropout masks from its own random stream;
- `attention`: SDPA attention with each run's attention-dropout masks;
- `fused`: a run's optimizer step as direct calls of torch's fused kernels;
- `sizing`: how many runs fit in memory at once.

Layers in block form (what a stack is made of, and what a lone run computes with) are
`xmodal_ft.blocks`; a lone run's layout is `xmodal_ft.engine.layout.Single`.
"""
