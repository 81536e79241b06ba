"""The domain model, pure: identities, hybrid clocks, records, key-value state, LWW tables."""
