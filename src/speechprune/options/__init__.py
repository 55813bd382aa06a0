"""Every command's typed configuration, one module per stage, importable without torch,
transformers, peft, accelerate, datasets, numpy, scipy or matplotlib: ``speechprune COMMAND --help``
reads a config from here and imports the command's own module only when the command runs.

Each stage's module re-exports its configs (``from speechprune.scan.run import ScanConfig`` keeps
working), and the constants their validators need (strategy names, heal targets, metrics, modes)
are defined here once and imported by the heavy modules. The stage order holds here too: a module
imports only the options of lower stages, ``speechprune.config`` and ``speechprune.errors``.
"""
