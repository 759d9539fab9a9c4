"""Kafka-free operators: the per-event logic the live pipeline and the offline replay share."""
