"""Flotilla daemon package."""
