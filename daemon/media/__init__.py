"""Media access for operations: URIs to confined paths, input limits, probing, and the
http(s):// and nats-obj:// transports."""
