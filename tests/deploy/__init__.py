"""Deployment tier: systemd units, the Ansible roles, Prometheus rules and the dashboard."""
