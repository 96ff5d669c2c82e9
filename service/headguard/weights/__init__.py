"""Versioned repair patches shared by workers and replicas, and which version is active."""
