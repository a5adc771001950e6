"""What an operator sees: status, reports, metrics, events."""
