"""headprune's test suite; ``tests.helpers`` builds tiny models and data files."""
