"""Baseline compression methods, one file per method, each a `study.methods.Method` registered on import.

`study` never imports this package: the `study.methods` entry point in pyproject.toml names it, and
`study.methods.get_method` loads it the first time a name is looked up.

  prune        unstructured global magnitude pruning (one-shot or Zhu & Gupta gradual)
  filterprune  L1-norm filter pruning (Li et al. 2017): a genuinely smaller network
  lowrank      Tucker-2 factorisation of convs: 1x1 -> kxk -> 1x1 (from scratch or decomposed mid-training)
  hashed       HashedNets for convs (Chen et al. 2015)
  width        the same architecture with every stage's channels scaled
  softshare    soft parameter sharing with template banks (Savarese & Maire 2019)
  hypernet     static HyperNetwork writing every 16x16xkxk kernel block from an embedding (Ha et al. 2017)

Every method with variants says which one a run used through `variant(args)` (a short label).
"""
from baselines import filterprune, hashed, hypernet, lowrank, prune, softshare, width  # noqa: F401  (register)
