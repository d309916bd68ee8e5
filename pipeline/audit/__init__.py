"""The audit trail: events, sinks, the recorder and the reader."""
