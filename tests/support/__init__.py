"""Helpers the tests share: servers, fleets, media, job builders."""
