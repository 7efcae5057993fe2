"""Flotilla's wire contract: msgspec structs for every message, and their subjects."""

from schemas.codec import DecodeError, Decoder, encode
from schemas.common import WIRE_VERSION
from schemas.subjects import Subjects, partition_of

__all__ = ["WIRE_VERSION", "DecodeError", "Decoder", "Subjects", "encode", "partition_of"]
