"""The event contract: Python records and the JSON Schema files generated from them."""
