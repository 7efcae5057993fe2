"""Fleet tier: a whole dev fleet as subprocesses (control plane and daemons), driven by the CLI."""
