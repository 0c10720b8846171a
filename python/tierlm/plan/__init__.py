"""Memory plans: where each activation, workspace and staging buffer lives in one arena.

solve() places buffers (native greedy, or an exact MIP warm-started from it); check() is an
independent verifier; trace_torch() records a PyTorch step's buffers; save()/load() read and
write the plans/seq-<N>.json files a package stores for the executor.
"""

from tierlm.plan.check import check
from tierlm.plan.mip import DEFAULT_SOLVER, SOLVERS
from tierlm.plan.solve import METHODS, Plan, greedy, lower_bound, solve
from tierlm.plan.store import load, plan_path, save
from tierlm.plan.trace import Trace, trace_torch

__all__ = [
    "DEFAULT_SOLVER",
    "METHODS",
    "SOLVERS",
    "Plan",
    "Trace",
    "check",
    "greedy",
    "load",
    "lower_bound",
    "plan_path",
    "save",
    "solve",
    "trace_torch",
]
