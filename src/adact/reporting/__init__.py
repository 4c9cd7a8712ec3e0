"""Reading finished runs back and reporting them: records, statistics, tables, figures, ``render`` and ``analyze``."""
