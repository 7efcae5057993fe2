"""`flotilla sim`: a fleet of simulated nodes running the daemon's own code against a real stack."""
