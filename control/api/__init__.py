"""The fleet API (a nats.micro service) and what it reads and checks: jobs, tenants,
rate limits and whether any node could run a job."""
