"""The use cases: what a request or a worker asks of darkroom, composed from the tables below."""
