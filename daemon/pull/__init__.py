"""Pulling work: one loop per pool, its submit wake-up and its slot accounting."""
