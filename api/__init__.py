"""The control plane: REST API, validation and the database schema."""
