"""Alerts: the fleet snapshot, rules with hysteresis, canaries, and where alerts go."""
