"""The status page (``/ui/``) and its JSON API: what is cached, what it saved, and how the
upstreams are doing, for the repositories the viewer may pull (``mirror.ui.enabled``)."""
