"""`python -m study bench`: how fast the harness trains and evaluates, CSG against plain, on this machine.

`suite` (arguments and the command), `throughput` (the trainer's own step, timed), `epoch` (the
harness's epoch against the authors'-style reference loop), `profile` (where a step's time goes),
`probes` (memory and worker measurements in fresh processes).
"""
from study.bench.suite import add_arguments, run

__all__ = ["add_arguments", "run"]
