"""Declarative experiment settings (DAPPER style: each names its expected result)."""
