"""Reusable test-support code for pullthrough: real registries, images, a recording proxy.

Modules: ``net`` (ports, proxy-free env, tiny HTTP client), ``registry`` (a real
``docker-registry`` process), ``images`` (OCI layouts, skopeo push/pull),
``proxy`` (recording, fault-injecting reverse proxy).
"""

KiB = 1024
MiB = 1024 * KiB
