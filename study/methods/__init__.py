"""Ways of building a (compressed) network: the `Method` interface and registry (`base`), the plain
network (`plain`) and CSG with its per-architecture plan (`csg`).  Other methods register through
the `study.methods` entry-point group (see `base`); the project's own are in `baselines/`."""
from study.methods import plain  # noqa: F401  (registers first: `none` leads every list of methods)
from study.methods import csg  # noqa: F401,I001
from study.methods.base import (METHODS, BudgetError, Method, budget_of, build, get_method, method_names,
                                no_plugins_hint, plan, register, resolve)

__all__ = ["METHODS", "BudgetError", "Method", "budget_of", "build", "get_method", "method_names",
           "no_plugins_hint", "plan", "register", "resolve"]
