"""Credits: integer micro-credits, and the ledger movements that tie money to task state."""
