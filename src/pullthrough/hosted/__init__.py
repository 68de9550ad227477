"""Hosted repositories: names clients push to, kept beside the mirrored ones in one store."""
