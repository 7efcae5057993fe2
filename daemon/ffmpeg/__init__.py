"""Running ffmpeg: finding the binaries, one process with progress and a stderr tail,
and the exit -> error classification."""
