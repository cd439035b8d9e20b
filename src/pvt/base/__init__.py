"""The base floor: facts and helpers that know nothing of PVT and import nothing else of pvt.

``constants`` (ImageNet statistics, the evaluation crop, every bound on a user- or file-given size),
``io`` (atomic writes and folders, bounded JSON / YAML / torch.load), ``cores`` (the cores this process
may use, passive OpenMP waiting), ``naming`` (the "did you mean" error), ``tracing`` (is this forward being
captured into a graph?), ``lazy`` (a package's names loaded on first use).
"""
