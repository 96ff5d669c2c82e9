"""The guard service: FastAPI app, scoring engine, policy, upstream proxy and admin API."""
