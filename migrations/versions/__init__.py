"""Version files of the records database schema, oldest first: ``YYYYMMDD_NNN_description.py``."""
