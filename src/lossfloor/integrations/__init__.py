"""Adapters that put models from other libraries on lossfloor's yardstick (optional dependencies)."""
