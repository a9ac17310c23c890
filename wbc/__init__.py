"""Shared, framework-level helpers (offline defaults, config resolvers, run utilities)."""

from wbc.env import apply_offline_defaults
from wbc.resolvers import register_resolvers

apply_offline_defaults()
register_resolvers()
