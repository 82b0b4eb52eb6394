"""The server: Quart app on Hypercorn, HTTP routes, rooms, auth, metrics, admin, CLI."""
