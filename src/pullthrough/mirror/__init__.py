"""The pull-through policy: what to serve from the store and what to fetch upstream."""
