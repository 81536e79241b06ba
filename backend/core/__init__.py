"""Pure cores: no I/O, no asyncio, no clock."""
