"""The four services: intake, routing, notify, audit. Each imports only the shared package, never another."""
