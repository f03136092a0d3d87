"""What opsq keeps in PostgreSQL: the pooled engine (``db``), the tables (``models``), their
migrations and the schema upgrade (``schema``), files stored by content (``files``), and
waiting on LISTEN/NOTIFY (``listen``)."""
