"""The `pneumoscan` operator CLI: local stack, uploads, results, offline scoring."""
