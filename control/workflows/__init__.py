"""Workflows: a DAG of ordinary jobs that the leader advances from their job states."""
