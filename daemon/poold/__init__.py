"""poold: a PostgreSQL connection pool daemon."""

__version__ = "0.1.0"
