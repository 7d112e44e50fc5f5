"""The chaos suite: real processes, injected failures, and the table that judges the promise
(nothing lost, nothing applied twice, latest request wins, no 429 outside injected storms, WFM
told once of every change, nothing left unacknowledged, no process died).

Run: ``python -m bench.chaos`` (every scenario, about 35 minutes), ``--short`` (the CI form,
under 3 minutes), ``--scenario NAME`` (repeatable). Exit status 1 when any column that must be
0 is not, in any scenario.
"""
