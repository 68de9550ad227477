"""The HTTP face of the mirror: routes, errors as OCI bodies, routing to upstreams."""
