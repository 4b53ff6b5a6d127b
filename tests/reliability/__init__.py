"""The reliability suite: property-based fuzzing of every RPC, and the bounded-work guarantees."""
