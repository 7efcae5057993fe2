"""One job on this node: from the delivered message to its ack, with its run handle,
watcher, retry policy and the registry of running jobs."""
