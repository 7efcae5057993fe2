"""The proving ground: a fault matrix against a real dev fleet that prints the figures.

`flotilla chaos` (`make chaos`) starts a dev fleet, streams small real ffmpeg jobs through the
control plane's submit API, injects faults one kind after another (each bounded in count and
time), lets the fleet settle, and audits the events stream, Postgres, the jobs stream and the
nodes' directories. See docs/chaos.md for the matrix and the definitions of every figure.
"""
