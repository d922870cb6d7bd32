"""Route Django reads to PostgreSQL replicas."""
