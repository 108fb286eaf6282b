"""Data synthesis: mining and scoring (query, positive, negative) rows."""
