"""What the scorer keeps: the database (tables, queries, migrations) and checkpoint files."""
