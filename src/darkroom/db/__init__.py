"""The database: schema, connections and migrations. The task table is also the queue."""
