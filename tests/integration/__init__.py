"""Integration tier: real nats-server, PostgreSQL and ffmpeg, one part at a time."""
