"""Cache nodes and a portal's side of the ring, pure: routing, held keys, the wire."""
