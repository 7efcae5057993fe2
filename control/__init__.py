"""Flotilla control package."""
