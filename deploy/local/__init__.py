"""The local stack: Tansu, an SMTP sink, the four services and demo keys, all under ``.run/``."""
