"""The daemon release version, reported in capabilities and metrics."""

VERSION = "0.1.0"
