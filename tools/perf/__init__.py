"""Performance tooling (real-scale runs, memory bandwidth, arithmetic peak, the peers), not installed with qrun.

Run it from the root of a checkout with qrun installed, as modules: `python -m tools.perf.realscale ...`,
`python -m tools.perf.bandwidth`, `python -m tools.perf.compute_peak`. It imports qrun as a library; docs/performance.md
has the commands and the results.
"""
