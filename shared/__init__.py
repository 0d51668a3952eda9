"""The project's shared package: the contracts every service agrees on.

Event models and topic names, the CloudEvents Kafka binding, the settings base, the broker factory, the
dead-letter middleware, the idempotent-consumer helper, health and metrics endpoints, and client authentication.
Services import from here and never from each other.
"""
