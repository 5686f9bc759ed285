"""Builders the tests and benchmarks share: tiny random-weight models, synthetic model runs
and a throwaway PostgreSQL server. Not part of the product package."""
