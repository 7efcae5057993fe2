"""Dead letters: from JetStream advisories to failed jobs, kept and re-submittable."""
