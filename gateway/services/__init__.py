"""The services ring: one module per use case (decisions, approvals, key rotation,
audit queries). Each orchestrates the domain and the store for one kind of call;
none knows about grpc. See docs/architecture.md."""
