"""The bus the components talk over: the Bus interface, MQTT, an in-memory twin, a probe."""
