"""Per-title ladders: `run` drives the search and the encodes; `search` picks samples and CRFs,
`args` builds the ffmpeg command lines, `files` names and seals the rungs."""
